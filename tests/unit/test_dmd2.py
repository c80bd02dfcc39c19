"""DMD2Loss (diffusion/dmd2.py) against computations written out here: the Karras grid, the phase schedule,
the distribution-matching gradient, the fake score's EDM loss, gradient isolation between parts, determinism."""

import math

import pytest
import torch
from torch import nn

from diffscale.diffusion.base import Phase
from diffscale.diffusion.dmd2 import DMD2Loss, karras_grid
from diffscale.diffusion.edm import EDMPrecond

GEN, FAKE = Phase("generator", ("generator",)), Phase("fake_score", ("fake_score",))
TOY = dict(type="ToyMLP", in_dim=2, num_classes=2, hidden_dim=16, num_layers=2)


class FixedGenerator(nn.Module):
    """Returns the tensor `out` [B, ...] itself whatever its input (a leaf with requires_grad collects the gradient
    with respect to the generator's output); records the inputs it was called with."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out
        self.calls = []

    def forward(self, x, sigma, labels):
        self.calls.append((x.clone(), sigma.clone(), labels))
        return self.out


class ToyDenoiser(nn.Module):
    """D(x; sigma) = a x / (1 + sigma^2) + b, with a learnable; records its inputs."""

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(a)), b
        self.calls = []

    def forward(self, x, sigma, labels):
        self.calls.append((x.clone(), sigma.clone(), labels))
        return self.a * x / (1 + sigma[:, None] ** 2) + self.b


class FixedDenoiser(nn.Module):
    """Returns `scale * value` whatever its input."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x, sigma, labels):
        return self.scale * self.value


def edm_model(seed: int) -> EDMPrecond:
    torch.manual_seed(seed)
    return EDMPrecond(TOY, sigma_data=0.5, label_dim=2)


def toy_batch(b: int = 8) -> dict:
    return {"x": torch.randn(b, 2, generator=torch.Generator().manual_seed(5)), "label": torch.arange(b) % 2}


def test_grid_matches_edm_formula_ascending():
    n, lo, hi, rho = 1000, 0.002, 80.0, 7.0
    grid = karras_grid(n, lo, hi, rho, "cpu")
    # EDM eq. 5 runs from sigma_max down: sigma_i = (hi^(1/rho) + i/(N-1) (lo^(1/rho) - hi^(1/rho)))^rho.
    descending = [(hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(n)]
    expected = torch.tensor(descending[::-1], dtype=torch.float32)
    assert grid.dtype == torch.float32 and grid.shape == (n,)
    torch.testing.assert_close(grid, expected, rtol=1e-6, atol=0)
    assert grid[0].item() == pytest.approx(0.002, rel=1e-6) and grid[-1].item() == pytest.approx(80.0, rel=1e-6)
    assert bool((grid[1:] > grid[:-1]).all())


def test_phase_schedule():
    loss = DMD2Loss(gen_update_every=5)
    for step in range(11):
        names = [p.name for p in loss.phases(step)]
        assert names == (["generator", "fake_score"] if step in (0, 5, 10) else ["fake_score"]), step
    assert loss.phases(0) == [GEN, FAKE]
    assert loss.parts == ("generator", "fake_score", "real_score") and loss.score_part == "fake_score"


def test_generator_gradient_is_normalised_score_difference():
    torch.manual_seed(0)
    x_g_value = torch.randn(6, 2)
    x_g = x_g_value.clone().requires_grad_(True)
    G, real, fake = FixedGenerator(x_g), ToyDenoiser(0.9, 0.05), ToyDenoiser(0.5, -0.1)
    loss_fn = DMD2Loss(sigma_max=80.0, min_level=20, max_level=980, sigma_gen=5.0)
    batch = toy_batch(6)
    models = {"generator": G, "real_score": real, "fake_score": fake}
    out = loss_fn(GEN, models, batch, torch.Generator().manual_seed(1))
    assert out.loss.shape == (6,) and out.loss.dtype == torch.float32
    out.loss.sum().backward()

    # The generator sees sigma_gen * z at level sigma_gen.
    gx, gsigma, glabels = G.calls[0]
    assert torch.equal(gsigma, torch.full((6,), 5.0)) and torch.equal(glabels, batch["label"])
    torch.testing.assert_close(gx, 5.0 * torch.randn(6, 2, generator=torch.Generator().manual_seed(1)))
    # The scores both see the same x_t at the same level, a grid level with index in [20, 980].
    x_t, sigma, _ = real.calls[0]
    assert torch.equal(x_t, fake.calls[0][0]) and torch.equal(sigma, fake.calls[0][1])
    grid = karras_grid(1000, 0.002, 80.0, 7.0)
    assert all(grid[20] <= s <= grid[980] and bool((grid == s).any()) for s in sigma)

    # By hand: p = x_g - D(x_t); w = mean |p_real|; g = (p_real - p_fake) / w; d loss / d x_g = g / numel.
    with torch.no_grad():
        s = sigma[:, None]
        p_real = x_g_value - (0.9 * x_t / (1 + s**2) + 0.05)
        p_fake = x_g_value - (0.5 * x_t / (1 + s**2) - 0.1)
        w = p_real.abs().mean(1, keepdim=True)
        g = (p_real - p_fake) / w
    torch.testing.assert_close(x_g.grad, g / 2)
    torch.testing.assert_close(out.loss, 0.5 * (g**2).mean(1))
    torch.testing.assert_close(out.logs["dmd_weight"], w.mean())
    torch.testing.assert_close(out.logs["grad_norm_dm"], g.abs().mean())
    assert real.a.grad is None and fake.a.grad is None


def test_generator_gradient_is_zero_where_the_normaliser_is_zero():
    """Row 0: D_real = D_fake = x_g (0/0); row 1: D_real = x_g != D_fake (x/0); both give no gradient."""
    x_g_value = torch.tensor([[0.3, -0.2], [1.0, 2.0], [0.5, 0.5]])
    real_out = torch.tensor([[0.3, -0.2], [1.0, 2.0], [0.1, 0.7]])
    fake_out = torch.tensor([[0.3, -0.2], [0.0, 2.5], [0.4, 0.2]])
    x_g = x_g_value.clone().requires_grad_(True)
    real, fake = FixedDenoiser(real_out), FixedDenoiser(fake_out)
    models = {"generator": FixedGenerator(x_g), "real_score": real, "fake_score": fake}
    out = DMD2Loss()(GEN, models, {"x": torch.zeros(3, 2)}, torch.Generator().manual_seed(0))
    assert bool(out.loss.isfinite().all())
    out.loss.sum().backward()
    p_real, p_fake = x_g_value[2] - real_out[2], x_g_value[2] - fake_out[2]
    g2 = (p_real - p_fake) / p_real.abs().mean()
    expected = torch.stack([torch.zeros(2), torch.zeros(2), g2 / 2])
    torch.testing.assert_close(x_g.grad, expected)
    assert out.loss[0].item() == 0 and out.loss[1].item() == 0
    assert real.scale.grad is None and fake.scale.grad is None


def test_fake_score_loss_is_edm_weighted_error_on_generator_samples():
    torch.manual_seed(0)
    x_g_value = torch.randn(5, 2)
    G, fake = FixedGenerator(x_g_value), ToyDenoiser(0.7, 0.2)
    loss_fn = DMD2Loss(sigma_max=5.0, sigma_data=0.5)
    batch = toy_batch(5)
    out = loss_fn(FAKE, {"generator": G, "real_score": ToyDenoiser(1.0, 0.0), "fake_score": fake}, batch,
                  torch.Generator().manual_seed(3))
    x_t, sigma, labels = fake.calls[0]
    assert torch.equal(labels, batch["label"])
    grid = karras_grid(1000, 0.002, 5.0, 7.0)
    assert all(bool((grid == s).any()) for s in sigma)
    for i in range(5):
        s, sd = sigma[i].item(), 0.5
        weight = (s * s + sd * sd) / (s * sd) ** 2  # EDM lambda(sigma)
        D = 0.7 * x_t[i].double() / (1 + s * s) + 0.2
        assert out.loss[i].item() == pytest.approx((weight * (D - x_g_value[i].double()) ** 2).mean().item(), rel=1e-5)
    # The noise is unit Gaussian of the documented draws: z, level index over the whole grid, noise.
    gen = torch.Generator().manual_seed(3)
    torch.testing.assert_close(G.calls[0][0], 5.0 * torch.randn(5, 2, generator=gen))
    idx = torch.randint(0, 1000, (5,), generator=gen)
    noise = torch.randn(5, 2, generator=gen)
    torch.testing.assert_close(sigma, grid[idx])
    torch.testing.assert_close(x_t, x_g_value + grid[idx][:, None] * noise)


def test_per_example_is_edm_weighted_error():
    x = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    cond = {"sigma": torch.tensor([0.1, 3.0]), "noise": torch.tensor([[1.0, 0.0], [-1.0, 2.0]])}
    D = ToyDenoiser(0.8, 0.0)
    loss = DMD2Loss(sigma_data=0.5).per_example(D, {"x": x}, cond)
    for i in range(2):
        s = cond["sigma"][i].item()
        x_noisy = x[i] + s * cond["noise"][i]
        err = (0.8 * x_noisy / (1 + s * s) - x[i]) ** 2
        assert loss[i].item() == pytest.approx(((s * s + 0.25) / (s * 0.5) ** 2 * err).mean().item(), rel=1e-6)


def test_sample_condition_covers_the_grid():
    loss = DMD2Loss(num_levels=50, min_level=1, max_level=48)
    cond = loss.sample_condition(torch.zeros(5000, 3), torch.Generator().manual_seed(0))
    grid = loss.grid(torch.device("cpu"))
    assert cond["sigma"].shape == (5000,) and cond["noise"].shape == (5000, 3)
    assert set(cond["sigma"].tolist()) == set(grid.tolist())  # every level drawn, nothing else
    assert cond["noise"].std().item() == pytest.approx(1.0, abs=0.03)


def _params_grads(model: nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in model.parameters()]


@pytest.mark.parametrize("phase", [GEN, FAKE])
def test_only_the_phase_part_gets_gradients(phase):
    models = {"generator": edm_model(0), "fake_score": edm_model(1), "real_score": edm_model(2)}
    out = DMD2Loss(sigma_max=5.0)(phase, models, toy_batch(), torch.Generator().manual_seed(0))
    out.loss.mean().backward()
    for name, model in models.items():
        grads = _params_grads(model)
        if name == phase.parts[0]:
            assert any(g is not None and bool(g.abs().sum() > 0) for g in grads), name
        else:
            assert all(g is None for g in grads), name


@pytest.mark.parametrize("phase", [GEN, FAKE])
def test_same_seed_same_loss(phase):
    models = {"generator": edm_model(0), "fake_score": edm_model(1), "real_score": edm_model(2)}
    loss = DMD2Loss(sigma_max=5.0)
    a = loss(phase, models, toy_batch(), torch.Generator().manual_seed(7))
    b = loss(phase, models, toy_batch(), torch.Generator().manual_seed(7))
    c = loss(phase, models, toy_batch(), torch.Generator().manual_seed(8))
    assert torch.equal(a.loss, b.loss) and all(torch.equal(a.logs[k], b.logs[k]) for k in a.logs)
    assert not torch.equal(a.loss, c.loss)


@pytest.mark.parametrize("kwargs, key", [
    (dict(gen_update_every=0), "objective.gen_update_every"),
    (dict(min_level=500, max_level=400), "objective.max_level"),
    (dict(max_level=1000), "objective.max_level"),
    (dict(min_level=-1), "objective.min_level"),
    (dict(sigma_min=1.0, sigma_max=0.5), "objective.sigma_max"),
    (dict(sigma_gen=0.0), "objective.sigma_gen"),
    (dict(num_levels=1, min_level=0, max_level=0), "objective.num_levels"),
])
def test_bad_arguments_name_their_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        DMD2Loss(**kwargs)


def test_sigma_gen_defaults_to_sigma_max():
    assert DMD2Loss(sigma_max=5.0).sigma_gen == 5.0 and DMD2Loss(sigma_max=5.0, sigma_gen=2.0).sigma_gen == 2.0
    assert math.isclose(DMD2Loss().sigma_gen, 80.0)
