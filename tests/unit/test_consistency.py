"""Consistency distillation (diffusion/consistency.py) and multistep consistency sampling (sampling/consistency.py)
against computations written out here: the boundary condition, the scalings, the CD loss with its own Heun step,
the pair index range and draw order, teacher and target isolation, the target update, LPIPS, and the sampler."""

import copy
import math

import pytest
import torch
from torch import nn

from diffscale.diffusion.base import Phase
from diffscale.diffusion.consistency import (
    ConsistencyDistillationLoss,
    ConsistencyPrecond,
    TargetUpdate,
    boundary_scalings,
    build_lpips,
    lerp_target_,
)
from diffscale.diffusion.edm import EDMPrecond
from diffscale.errors import ConfigError
from diffscale.registry import MODELS, OBJECTIVES, SAMPLERS, build
from diffscale.sampling.consistency import CIFAR10_CD_TWO_STEP, ConsistencySampler
from diffscale.sampling.ddpm import step_noise
from diffscale.sampling.generate import seeded_noise

TOY = dict(type="ToyMLP", in_dim=2, num_classes=2, hidden_dim=16, num_layers=2)
TRAIN = Phase("train", ("model",))
SIGMA_MIN, SIGMA_MAX, RHO, SD = 0.002, 80.0, 7.0, 0.5


class TinyImageBody(nn.Module):
    """F(x[B, 3, S, S], c_noise[B], labels[B, 0]) -> [B, 3, S, S]: an MLP on the flattened image."""

    def __init__(self, side: int = 8, hidden: int = 32):
        super().__init__()
        self.side = side
        self.fc1 = nn.Linear(3 * side * side + 1, hidden)
        self.fc2 = nn.Linear(hidden, 3 * side * side)

    def forward(self, x, c_noise, labels):
        h = torch.cat([x.flatten(1), c_noise.reshape(-1, 1).to(x.dtype)], dim=1)
        return self.fc2(nn.functional.silu(self.fc1(h))).reshape(x.shape)


def student(seed: int) -> ConsistencyPrecond:
    torch.manual_seed(seed)
    return ConsistencyPrecond(TOY, sigma_data=SD, label_dim=2, sigma_min=SIGMA_MIN)


def teacher(seed: int) -> EDMPrecond:
    torch.manual_seed(seed)
    return EDMPrecond(TOY, sigma_data=SD, label_dim=2).eval()


def toy_batch(b: int = 16) -> dict:
    return {"x": torch.randn(b, 2, generator=torch.Generator().manual_seed(5)), "label": torch.arange(b) % 2}


def karras_ascending(n: int) -> list[float]:
    """EDM eq. 5 written out (descending from sigma_max), reversed: index 0 = sigma_min."""
    hi, lo = SIGMA_MAX ** (1 / RHO), SIGMA_MIN ** (1 / RHO)
    return [(hi + i / (n - 1) * (lo - hi)) ** RHO for i in range(n)][::-1]


# ---------------------------------------------------------------------- the consistency function
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boundary_condition_is_exact(seed):
    torch.manual_seed(seed)
    for net, x in [(student(seed), torch.randn(32, 2) * 3), (ConsistencyPrecond(TinyImageBody(), sigma_min=SIGMA_MIN),
                                                            torch.randn(4, 3, 8, 8))]:
        for p in net.net.parameters():  # a random body with large weights: F is far from zero
            p.data.normal_(0, 2)
        labels = torch.arange(x.shape[0]) % 2 if net.label_dim else None
        f = net(x, torch.full((x.shape[0],), SIGMA_MIN), labels)
        assert f.dtype == torch.float32 and torch.equal(f, x)
        assert not torch.equal(net(x, torch.full((x.shape[0],), 2 * SIGMA_MIN), labels), x)


def test_scalings_and_forward_match_direct_computation():
    sigmas = torch.tensor([0.002, 0.01, 0.3, 1.0, 7.5, 80.0])
    c_skip, c_out = boundary_scalings(sigmas, SD, SIGMA_MIN, 2)
    for i, s in enumerate(sigmas.double().tolist()):
        assert c_skip[i, 0].item() == pytest.approx(SD**2 / ((s - SIGMA_MIN) ** 2 + SD**2), rel=1e-6)
        assert c_out[i, 0].item() == pytest.approx((s - SIGMA_MIN) * SD / math.sqrt(s**2 + SD**2), rel=1e-5, abs=1e-9)
    net, x, labels = student(3), torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 1, 0])
    c_in = 1 / (sigmas**2 + SD**2).sqrt()
    F = net.net(c_in[:, None] * x, sigmas.log() / 4, nn.functional.one_hot(labels, 2).float())
    expected = c_skip * x + c_out * F
    torch.testing.assert_close(net(x, sigmas, labels), expected, rtol=1e-6, atol=1e-7)


def test_teacher_weights_initialise_the_student_and_the_logvar_head_is_frozen():
    t, s = teacher(4), student(5)
    s.load_state_dict(t.state_dict(), strict=True)  # the teacher's checkpoint loads strictly (part `init`)
    trainable = {n for n, p in s.named_parameters() if p.requires_grad}
    assert trainable == {f"net.{n}" for n, _ in s.net.named_parameters()}
    torch.manual_seed(6)  # a teacher without the log-variance head (EDM's own EDMPrecond) initialises one too
    headless = ConsistencyPrecond(TOY, label_dim=2, logvar_channels=0)
    headless.load_state_dict(EDMPrecond(TOY, label_dim=2, logvar_channels=0).state_dict(), strict=True)
    built = build(MODELS, dict(type="ConsistencyPrecond", net=TOY, label_dim=2), "model")
    assert isinstance(built, ConsistencyPrecond) and built.sigma_min == SIGMA_MIN


# ---------------------------------------------------------------------- the CD loss
def direct_cd_loss(models: dict, batch: dict, index: torch.Tensor, z: torch.Tensor, distance: str,
                   weighting: str = "uniform", target: str = "model") -> torch.Tensor:
    """The CD loss of one example at a time, with its own grid and Heun step."""
    grid = karras_ascending(18)
    out = []
    for i in range(batch["x"].shape[0]):
        x, label = batch["x"][i:i + 1], batch["label"][i:i + 1]
        s0, s1 = grid[int(index[i])], grid[int(index[i]) + 1]  # sigma_n < sigma_{n+1}
        sig = lambda s: torch.full((1,), s, dtype=torch.float32)
        x1 = x + s1 * z[i:i + 1]
        with torch.no_grad():
            d1 = (x1 - models["teacher"](x1, sig(s1), label)) / s1  # dx/dsigma at sigma_{n+1}
            x_euler = x1 + (s0 - s1) * d1
            d0 = (x_euler - models["teacher"](x_euler, sig(s0), label)) / s0  # at sigma_n, from the Euler point
            x_hat = x1 + (s0 - s1) * (d1 + d0) / 2
            y = models[target](x_hat, sig(s0), label)
        diff = models["model"](x1, sig(s1), label) - y
        if distance == "l2":
            d = (diff**2).mean()
        else:  # pseudo-Huber, c = 0.00054 sqrt(d) with d = 2 elements
            c = 0.00054 * math.sqrt(2)
            d = torch.sqrt((diff**2).sum() + c**2) - c
        out.append(d * (1.0 if weighting == "uniform" else 1 / (s1 - s0)))
    return torch.stack(out)


@pytest.mark.parametrize(("distance", "weighting"), [("l2", "uniform"), ("pseudo_huber", "uniform"), ("l2", "icm")])
def test_cd_loss_against_direct_computation(distance, weighting):
    obj = build(OBJECTIVES, dict(type="ConsistencyDistillationLoss", distance=distance, weighting=weighting),
                "objective")
    models, batch = {"model": student(0), "teacher": teacher(1)}, toy_batch()
    gen = torch.Generator().manual_seed(7)
    out = obj(TRAIN, models, batch, gen)
    # Draw order: the pair index, then the noise, from the trainer's generator.
    replay = torch.Generator().manual_seed(7)
    index = torch.randint(0, 17, (16,), generator=replay)
    z = torch.randn(16, 2, generator=replay)
    assert out.loss.shape == (16,) and out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, direct_cd_loss(models, batch, index, z, distance, weighting),
                               rtol=1e-5, atol=1e-7)
    # A batch that carries its condition is scored at it.
    again = obj(TRAIN, models, dict(batch, cond={"index": index, "noise": z}), torch.Generator().manual_seed(99))
    torch.testing.assert_close(again.loss, out.loss, rtol=0, atol=0)


def test_loss_uses_the_target_part_when_mu_is_positive():
    obj = ConsistencyDistillationLoss(target_decay=0.95)
    assert obj.parts == ("model", "teacher", "target") and ConsistencyDistillationLoss().parts == ("model", "teacher")
    models, batch = {"model": student(0), "teacher": teacher(1), "target": student(2)}, toy_batch()
    cond = obj.sample_condition(batch["x"], torch.Generator().manual_seed(3))
    loss = obj.loss(models, batch, cond)
    expected = direct_cd_loss(models, batch, cond["index"], cond["noise"], "l2", target="target")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)


def test_pair_index_covers_0_to_n_minus_2_only():
    obj, x, gen = ConsistencyDistillationLoss(num_scales=18), torch.zeros(4096, 2), torch.Generator().manual_seed(0)
    index = obj.sample_condition(x, gen)["index"]
    assert set(index.tolist()) == set(range(17))  # n in [0, N-2]: the pair (sigma_n, sigma_{n+1}); never N-1
    grid = obj.grid("cpu")
    torch.testing.assert_close(grid, torch.tensor(karras_ascending(18), dtype=torch.float32), rtol=1e-6, atol=0)


def test_gradients_reach_only_the_student_and_the_teacher_never_changes():
    obj = ConsistencyDistillationLoss(target_decay=0.9)
    t = teacher(1).requires_grad_(True)  # even a teacher that could take gradients gets none
    models = {"model": student(0), "teacher": t, "target": student(0).requires_grad_(True)}
    teacher_before = copy.deepcopy(t.state_dict())
    opt = torch.optim.Adam([p for p in models["model"].parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        obj(TRAIN, models, toy_batch(), gen).loss.mean().backward()
        assert all(p.grad is None for p in t.parameters())
        assert all(p.grad is None for p in models["target"].parameters())
        grads = [p.grad for p in models["model"].net.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
        opt.step()
        opt.zero_grad(set_to_none=True)
        obj.update_target(models)
    assert obj.phases(0) == [Phase("train", ("model",))]  # the teacher and target are in no phase
    assert all(torch.equal(v, teacher_before[k]) for k, v in t.state_dict().items())


def test_target_update_formula():
    online, target = student(0), student(1)
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    lerp_target_(target, online, 0.95)
    for n, p in target.named_parameters():
        torch.testing.assert_close(p, 0.95 * before[n] + 0.05 * dict(online.named_parameters())[n],
                                   rtol=1e-6, atol=1e-7)
    obj = ConsistencyDistillationLoss(target_decay=0.95)
    assert obj.target_updates(TRAIN) == [TargetUpdate("target", "model", 0.95)]
    assert obj.follows == {"target": "model"}
    assert ConsistencyDistillationLoss().target_updates(TRAIN) == []  # mu = 0: the target is the student
    assert ConsistencyDistillationLoss().follows == {}
    lerp_target_(target, online, 0.0)  # mu = 0 copies
    assert all(torch.equal(p, dict(online.named_parameters())[n]) for n, p in target.named_parameters())


def test_config_errors():
    for bad in (dict(distance="l3"), dict(weighting="snr"), dict(target_decay=1.0), dict(num_scales=1),
                dict(distance="lpips"), dict(distance="lpips", lpips_weights="/nonexistent/vgg.pth")):
        with pytest.raises(ConfigError):
            ConsistencyDistillationLoss(**bad)
    with pytest.raises(ConfigError, match="vgg16-397923af.pth"):
        ConsistencyDistillationLoss(distance="lpips", lpips_weights="/nonexistent/vgg.pth")
    with pytest.raises(ConfigError, match="teacher"):
        ConsistencyDistillationLoss().per_example(student(0), toy_batch(), {})


# ---------------------------------------------------------------------- LPIPS
def test_lpips_random_weights_shape_finite_and_zero_for_identical():
    pytest.importorskip("lpips")
    obj = ConsistencyDistillationLoss(distance="lpips", lpips_random_init=True, lpips_resize=32)
    models = {"model": ConsistencyPrecond(TinyImageBody()), "teacher": EDMPrecond(TinyImageBody()).eval()}
    batch = {"x": torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)}
    out = obj(TRAIN, models, batch, torch.Generator().manual_seed(1))
    assert out.loss.shape == (3,) and out.loss.dtype == torch.float32 and bool(out.loss.isfinite().all())
    a = torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.equal(obj.metric(a, a.clone()), torch.zeros(2))
    assert not torch.equal(obj.metric(a, a.flip(0)), torch.zeros(2))


def test_lpips_weights_files_load_without_download(tmp_path):
    pytest.importorskip("lpips")
    import lpips
    from torchvision.models.vgg import cfgs, make_layers

    vgg = make_layers(cfgs["D"])  # torchvision's VGG16 trunk, random here; its state dict keys are features.*
    torch.save({f"features.{k}": v for k, v in vgg.state_dict().items()}, tmp_path / "vgg16.pth")
    net = build_lpips(str(tmp_path / "vgg16.pth"), random_init=False)
    assert torch.equal(getattr(net.net.slice3, "10").weight, vgg[10].weight)
    assert torch.equal(net.net.slice5[-2].bias, vgg[28].bias)
    heads = torch.load(lpips.__file__.replace("__init__.py", "weights/v0.1/vgg.pth"), map_location="cpu",
                       weights_only=True)
    assert torch.equal(net.lins[2].model[1].weight, heads["lin2.model.1.weight"])  # the package's own heads
    torch.testing.assert_close(net.scaling_layer.shift.flatten(), torch.tensor([-0.030, -0.088, -0.188]))
    torch.save(net.state_dict(), tmp_path / "lpips_vgg.pth")  # the whole LPIPS state dict
    again = build_lpips(str(tmp_path / "lpips_vgg.pth"), random_init=False)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in again.state_dict().items())
    assert not any(p.requires_grad for p in again.parameters()) and not again.training


# ---------------------------------------------------------------------- the sampler
def toy_consistency_model() -> ConsistencyPrecond:
    return student(0).eval()


def test_one_step_is_f_at_sigma_max():
    net, z, labels = toy_consistency_model(), torch.randn(32, 2, generator=torch.Generator().manual_seed(1)), None
    labels = torch.arange(32) % 2
    sampler = build(SAMPLERS, dict(type="ConsistencySampler"), "test_cfg.sampler")
    assert sampler.guidance == 1.0 and not sampler.takes_seeds
    with torch.no_grad():
        expected = net(z * SIGMA_MAX, torch.full((32,), SIGMA_MAX), labels)
    samples = sampler(net, z, labels)
    assert samples.dtype == torch.float32 and not samples.requires_grad
    torch.testing.assert_close(samples, expected, rtol=0, atol=0)


def test_two_steps_written_out_and_independent_of_the_batch():
    net, sampler = toy_consistency_model(), ConsistencySampler(sigmas=CIFAR10_CD_TWO_STEP)
    assert sampler.takes_seeds
    seeds = torch.tensor([3, 5, 7, 11])
    z, labels = seeded_noise(seeds, (2,)), seeds % 2
    samples = sampler(net, z, labels, seeds=seeds)
    s1 = CIFAR10_CD_TWO_STEP[1]
    with torch.no_grad():
        x = net(z * SIGMA_MAX, torch.full((4,), SIGMA_MAX), labels)
        x = net(x + math.sqrt(s1**2 - SIGMA_MIN**2) * step_noise(seeds, (2,), 1, "cpu").next(),
                torch.full((4,), s1), labels)
    torch.testing.assert_close(samples, x, rtol=0, atol=1e-6)
    alone = sampler(net, z[1:2], labels[1:2], seeds=seeds[1:2])  # seed 5 drawn alone
    torch.testing.assert_close(alone, samples[1:2], rtol=0, atol=1e-6)
    other = sampler(net, z, labels, seeds=seeds + 100)  # other step noise, same initial noise: other samples
    assert not torch.allclose(other, samples)


def test_sampler_errors_and_clipping():
    for bad in (dict(sigmas=()), dict(sigmas=(0.5, 80.0)), dict(sigmas=(80.0, 0.002)), dict(sigmas=80.0)):
        with pytest.raises(ConfigError):
            ConsistencySampler(**bad)
    net = toy_consistency_model()
    with pytest.raises(ValueError, match="no guide"):
        ConsistencySampler()(net, torch.zeros(2, 2), guide=net)
    clipped = ConsistencySampler(clip_denoised=True)(net, torch.randn(64, 2) * 10)
    assert clipped.abs().max() <= 1
