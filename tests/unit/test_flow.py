"""Rectified flow: the objective against an independent computation, the t densities, and each sampler on a Gaussian
data distribution whose exact velocity field is written here in closed form."""

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from diffscale.diffusion.flow import RectifiedFlowLoss, shift_time
from diffscale.errors import ConfigError
from diffscale.sampling.flow import (
    FlowEulerSampler,
    FlowEulerStochasticSampler,
    FlowHeunSampler,
    flow_grid,
)

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)  # data mean per dimension
STD = torch.tensor([0.5, 2.0], dtype=torch.float64)  # data std per dimension


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
    """E[eps - x0 | x_t] for x0 ~ N(MU, STD^2), x_t = (1 - t) x0 + t eps (jointly Gaussian):
    Cov(x_t, eps) = t, Cov(x_t, x0) = (1 - t) STD^2, Var x_t = (1 - t)^2 STD^2 + t^2."""
    t = t.double()[:, None]
    var = (1 - t) ** 2 * STD**2 + t**2
    return -MU + (t - (1 - t) * STD**2) * (x.double() - (1 - t) * MU) / var


NOISE = torch.randn(100_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
EXACT = MU + STD * NOISE  # the ODE's flow map of a Gaussian is affine: noise z ends at MU + STD z


def mean_std_errors(x: torch.Tensor) -> tuple[float, float]:
    """Largest |mean - MU| in units of the standard error, largest relative std error."""
    x = x.double()
    se = STD / math.sqrt(x.shape[0])
    return float(((x.mean(0) - MU).abs() / se).max()), float(((x.std(0) - STD).abs() / STD).max())


# ---------------------------------------------------------------------------------------------- objective
def test_loss_is_the_velocity_mse_at_the_interpolant():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 3)
    model = lambda x, t, labels: net(x) * t[:, None]  # noqa: E731
    x0 = torch.randn(5, 3)
    obj = RectifiedFlowLoss(p_uncond=0.0)
    cond = obj.sample_condition(x0, torch.Generator().manual_seed(1))
    got = obj.per_example(model, {"x": x0}, cond)
    t, eps = cond["t"][:, None], cond["noise"]
    x_t = (1 - t) * x0 + t * eps  # t = 1 is noise
    expected = ((net(x_t) * t - (eps - x0)) ** 2).mean(1)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(RectifiedFlowLoss(p_uncond=0.0, reduction="sum").per_example(model, {"x": x0}, cond),
                          expected * 3, atol=1e-5)


def test_logit_normal_t_is_the_sigmoid_of_a_normal():
    obj = RectifiedFlowLoss(logit_mean=0.5, logit_std=0.8)
    t = obj.sample_t(20_000, torch.device("cpu"), torch.Generator().manual_seed(0)).double().numpy()
    # Independent: the CDF of sigmoid(N(m, s^2)) at u is Phi((logit(u) - m) / s).
    ks = stats.kstest(t, lambda u: stats.norm.cdf((special.logit(u) - 0.5) / 0.8))
    assert ks.pvalue > 1e-3
    uniform = RectifiedFlowLoss(t_sampling="uniform").sample_t(20_000, torch.device("cpu"),
                                                                torch.Generator().manual_seed(0))
    assert stats.kstest(uniform.double().numpy(), "uniform").pvalue > 1e-3


def test_shift_matches_the_formula_and_pushes_t_toward_noise():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    s = 3.0
    assert torch.allclose(shift_time(t, s), s * t / (1 + (s - 1) * t))
    assert shift_time(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)  # 1.5 / 2
    assert torch.equal(shift_time(t, 1.0), t)
    shifted = RectifiedFlowLoss(t_sampling="uniform", shift=3.0).sample_t(
        50_000, torch.device("cpu"), torch.Generator().manual_seed(0)).double()
    # E[t'] for t ~ U(0, 1): integral of 3t / (1 + 2t) = 3/2 - 3 ln(3) / 4 (closed form)
    assert shifted.mean().item() == pytest.approx(1.5 - 0.75 * math.log(3), abs=0.005)


def test_label_dropout_uses_the_null_class():
    obj = RectifiedFlowLoss(p_uncond=0.25)
    seen = []
    model = lambda x, t, labels: seen.append(labels) or torch.zeros_like(x)  # noqa: E731
    x = torch.zeros(4000, 2)
    cond = obj.sample_condition(x, torch.Generator().manual_seed(0))
    obj.per_example(model, {"x": x, "label": torch.ones(4000, dtype=torch.long)}, cond)
    dropped = (seen[0] == -1).double().mean().item()
    assert dropped == pytest.approx(0.25, abs=0.03)
    assert torch.equal(seen[0] == -1, cond["drop"])


@pytest.mark.parametrize(("key", "value"), [("t_sampling", "beta"), ("logit_std", 0.0), ("shift", -1.0),
                                            ("p_uncond", 1.0), ("reduction", "max")])
def test_bad_arguments_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"objective.{key}"):
        RectifiedFlowLoss(**{key: value})


# ---------------------------------------------------------------------------------------------- samplers
def test_grid_is_the_seeds_linspace_and_shifts():
    grid = flow_grid(4, 1.0)
    assert grid[:-1] == pytest.approx(np.linspace(1, 1 / 4, 4))  # the seed's linspace(1, 1/N, N), dt = 1/N
    assert grid[-1] == 0.0
    assert flow_grid(4, 3.0)[2] == pytest.approx(0.75)


@pytest.mark.parametrize(("sampler", "max_rel_std_err"), [
    (FlowEulerSampler(num_steps=100), 0.02),
    (FlowHeunSampler(num_steps=100), 0.002),
    (FlowEulerStochasticSampler(num_steps=100), 0.02),
])
def test_each_sampler_reproduces_the_gaussian_data(sampler, max_rel_std_err):
    """Samples of the exact velocity field have the data's mean (within 5 standard errors) and std (within
    2% for the first-order samplers at 100 steps, 0.2% for Heun)."""
    x = sampler(gaussian_velocity, NOISE, None)
    mean_se, std_rel = mean_std_errors(x)
    assert mean_se < 5
    assert std_rel < max_rel_std_err


def test_heun_error_is_far_below_eulers():
    """Against the exact flow map (MU + STD z): at 32 steps Euler's largest error is > 50x Heun's, and Heun's
    error falls as 1/N^2 (second order): 4x the steps, at least 10x smaller."""
    err = {}
    for name, cls in (("euler", FlowEulerSampler), ("heun", FlowHeunSampler)):
        for n in (8, 32):
            x = cls(num_steps=n)(gaussian_velocity, NOISE[:1000], None).double()
            err[name, n] = (x - EXACT[:1000]).abs().max().item()
    assert err["euler", 32] > 50 * err["heun", 32]
    assert err["heun", 8] > 10 * err["heun", 32]
    assert err["euler", 8] > 3 * err["euler", 32]  # first order: about 4x


def test_the_seeds_stochastic_update_without_the_score_term_inflates_the_variance():
    """correction=False is the seed's x - v dt + sigma sqrt(dt) z: the added noise is never removed, so the std
    comes out > 10% too large (the corrected sampler is within 2%, test above)."""
    x = FlowEulerStochasticSampler(num_steps=100, correction=False)(gaussian_velocity, NOISE[:20_000], None)
    assert ((x.double().std(0) - STD) / STD).min().item() > 0.10


def test_stochastic_samples_do_not_depend_on_the_batch():
    s = FlowEulerStochasticSampler(num_steps=10)
    seeds = torch.arange(6) + 100
    whole = s(gaussian_velocity, NOISE[:6], None, seeds=seeds)
    parts = torch.cat([s(gaussian_velocity, NOISE[i:i + 2], None, seeds=seeds[i:i + 2]) for i in (0, 2, 4)])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, s(gaussian_velocity, NOISE[:6], None, seeds=seeds + 1))


def test_guidance_is_the_seeds_cfg_with_w_plus_one():
    """One Euler step with guidance g = 1 + w equals x - ((1 + w) v_cond - w v_uncond) dt, the seed's formula."""
    w = 3.0
    v_cond = lambda x, t, labels: torch.ones_like(x) * 2  # noqa: E731
    v_uncond = lambda x, t, labels: torch.ones_like(x) * 0.5  # noqa: E731
    x = torch.zeros(3, 2)
    got = FlowEulerSampler(num_steps=1, guidance=1 + w)(v_cond, x, None, guide=v_uncond)
    assert torch.allclose(got, x - ((1 + w) * 2 - w * 0.5) * 1.0)
    heun_calls = []
    counting = lambda x, t, labels: heun_calls.append(1) or torch.zeros_like(x)  # noqa: E731
    FlowHeunSampler(num_steps=2, guidance=2.0)(counting, x, None, guide=counting)
    assert len(heun_calls) == 2 * 2 * 2  # 2 steps x 2 evaluations x (net + guide): guidance at both


def test_bad_sampler_arguments():
    with pytest.raises(ConfigError, match="sampler.num_steps"):
        FlowEulerSampler(num_steps=0)
    with pytest.raises(ConfigError, match="sampler.shift"):
        FlowHeunSampler(shift=0.0)
