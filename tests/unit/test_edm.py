"""EDM preconditioning, loss weighting and the Heun sampler against independent computations."""

import math

import pytest
import torch
from torch import nn

from diffscale.data.toy import tree_mixture
from diffscale.diffusion.edm import EDMLoss, EDMPrecond
from diffscale.sampling.edm_heun import EDMHeunSampler, edm_sigmas


class FixedNet(nn.Module):
    """D and logvar fixed by the test, so the loss can be computed by hand."""

    def __init__(self, D: torch.Tensor, logvar: torch.Tensor):
        super().__init__()
        self.D, self.logvar = D, logvar

    def forward(self, x, sigma, labels, return_logvar=False):
        return (self.D, self.logvar) if return_logvar else self.D


def test_loss_matches_edm2_formula_elementwise():
    torch.manual_seed(0)
    x, n = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 5.0, 40.0])
    D, logvar = torch.randn(6, 3, 4, 4), torch.randn(6)
    batch, cond = {"x": x}, {"sigma": sigma, "noise": n}
    loss_mean = EDMLoss(sigma_data=0.5, reduction="mean").per_example(FixedNet(D, logvar), batch, cond)
    loss_sum = EDMLoss(sigma_data=0.5, reduction="sum").per_example(FixedNet(D, logvar), batch, cond)
    for i in range(6):
        s, sd = sigma[i].item(), 0.5
        weight = (s * s + sd * sd) / (s * sd) ** 2  # EDM eq. 8 / EDM2: lambda(sigma)
        elems = weight / math.exp(logvar[i].item()) * (D[i] - x[i]).double() ** 2 + logvar[i].item()
        assert loss_sum[i].item() == pytest.approx(elems.sum().item(), rel=1e-5)
        assert loss_mean[i].item() == pytest.approx(elems.mean().item(), rel=1e-5)


def test_noise_distribution_is_lognormal():
    loss = EDMLoss(P_mean=-0.4, P_std=1.0)
    cond = loss.sample_condition(torch.zeros(200_000, 2), torch.Generator().manual_seed(1))
    sigma, noise = cond["sigma"], cond["noise"]
    assert sigma.log().mean().item() == pytest.approx(-0.4, abs=0.01)
    assert sigma.log().std().item() == pytest.approx(1.0, abs=0.01)
    assert noise.std().item() == pytest.approx(1.0, abs=0.01)


def test_preconditioning_coefficients():
    """With F = 0 the output is c_skip x; with F = 1 the added part is c_out (EDM Table 1)."""
    class Const(nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, x, c_noise, labels):
            return torch.full_like(x, self.value)

    x, sigma, sd = torch.ones(3, 2), torch.tensor([0.1, 1.0, 10.0]), 0.5
    d0 = EDMPrecond(Const(0.0), sigma_data=sd, label_dim=2)(x, sigma)
    d1 = EDMPrecond(Const(1.0), sigma_data=sd, label_dim=2)(x, sigma)
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
    assert torch.allclose(d0[:, 0], c_skip)
    assert torch.allclose((d1 - d0)[:, 0], c_out)


def test_sigma_schedule_endpoints_and_rho():
    s = edm_sigmas(18, 0.002, 80.0, 7.0, torch.device("cpu"))
    assert s[0].item() == pytest.approx(80.0) and s[-2].item() == pytest.approx(0.002) and s[-1] == 0
    mid = (80 ** (1 / 7) + 9 / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7  # EDM eq. 5, i = 9
    assert s[9].item() == pytest.approx(mid)


def test_heun_with_exact_denoiser_samples_the_tree():
    """The sampler driven by the mixture's exact denoiser lands on the ground-truth support: almost all samples
    have a log-density far above that of points spread uniformly over the plot."""
    mixture = tree_mixture().select(0)
    exact = lambda x, sigma, labels: mixture.denoise(x, float(sigma[0]))
    noise = torch.randn(800, 2, generator=torch.Generator().manual_seed(0))
    samples = EDMHeunSampler(num_steps=32, sigma_max=5.0)(exact, noise)
    logp_samples = mixture.log_prob(samples)
    data, _ = mixture.sample(2000, torch.Generator().manual_seed(1))
    logp_data = mixture.log_prob(data)
    # Same typical density as true data (medians within 0.5 nats) ...
    assert abs(logp_samples.median().item() - logp_data.median().item()) < 0.5
    # ... and nowhere near uniform noise over the plot.
    uniform = torch.rand(2000, 2) * torch.tensor([3.2, 2.3]) - torch.tensor([1.6, 1.15])
    assert (logp_samples > mixture.log_prob(uniform).median()).float().mean() > 0.97


def test_guidance_formula():
    """D = D_guide + w (D_main - D_guide): with constant denoisers the first Euler step is exact."""
    main = lambda x, s, c: torch.full_like(x, 1.0)
    guide = lambda x, s, c: torch.full_like(x, 0.0)
    sampler = EDMHeunSampler(num_steps=2, sigma_max=1.0, sigma_min=0.5, guidance=3.0)
    out = sampler(main, torch.zeros(4, 2), guide=guide)
    # Constant D = 3: x moves straight to D as sigma -> 0.
    assert torch.allclose(out, torch.full_like(out, 3.0), atol=1e-6)
