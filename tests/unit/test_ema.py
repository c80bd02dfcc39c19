"""Power-function EMA against an independent computation of the EDM2 averaging profile."""

import numpy as np
import pytest
import torch
from scipy import integrate

from diffscale.engine.ema import ParamEMA, power_beta, std_to_gamma


@pytest.mark.parametrize("sigma_rel", [0.010, 0.050, 0.100, 0.200])
def test_gamma_gives_the_requested_relative_std(sigma_rel):
    """The profile p(tau) = (gamma + 1) tau^gamma on [0, 1] has standard deviation sigma_rel (numeric integral)."""
    g = std_to_gamma(sigma_rel)
    p = lambda t: (g + 1) * t**g
    mass = integrate.quad(p, 0, 1)[0]
    mean = integrate.quad(lambda t: t * p(t), 0, 1)[0]
    second = integrate.quad(lambda t: t * t * p(t), 0, 1)[0]
    assert mass == pytest.approx(1.0, abs=1e-9)
    assert np.sqrt(second - mean**2) == pytest.approx(sigma_rel, rel=1e-6)


def test_published_gamma_for_edm2_defaults():
    # EDM2 (Karras et al. 2024, Sec. 3.1) quotes gamma = 16.97 for sigma_rel = 0.05 and 6.94 for 0.10.
    assert std_to_gamma(0.050) == pytest.approx(16.97, abs=0.01)
    assert std_to_gamma(0.100) == pytest.approx(6.94, abs=0.01)


def test_update_equals_power_weighted_average_of_history():
    """After T updates the average is sum_t w_t theta_t with w_t from the product of the betas, which for
    a power function is proportional to t^gamma (the profile the paper defines)."""
    gamma, steps = std_to_gamma(0.10), 400
    gen = torch.Generator().manual_seed(0)
    history = torch.randn(steps, 5, generator=gen, dtype=torch.float64).cumsum(0)
    ema = ParamEMA({"w": history[0].float()}, ["pf"])
    for t in range(1, steps + 1):
        ema.update({"w": history[t - 1].float()}, {"pf": power_beta(gamma, t)})
    # Independent: weights of theta_t proportional to prod_{s>t} beta_s (1 - beta_t).
    betas = np.array([power_beta(gamma, t) for t in range(1, steps + 1)])
    weights = np.array([(1 - betas[t]) * np.prod(betas[t + 1:]) for t in range(steps)])
    expected = (torch.from_numpy(weights)[:, None] * history).sum(0)
    assert torch.allclose(ema.averages["pf"]["w"].double(), expected, rtol=1e-5, atol=1e-5)
    # And those weights follow t^gamma closely (the continuous profile), normalised.
    t = np.arange(1, steps + 1, dtype=np.float64)
    profile = t**gamma / (t**gamma).sum()
    assert np.abs(weights - profile).sum() < 0.02


def test_first_update_copies_weights():
    ema = ParamEMA({"w": torch.zeros(3)}, ["pf"])
    ema.update({"w": torch.ones(3)}, {"pf": power_beta(5.0, 1)})
    assert torch.equal(ema.averages["pf"]["w"], torch.ones(3))


def test_hook_interval_updates_the_decays_every_interval_steps_and_the_power_function_every_step():
    """EMAHook(decays=(0.5,), interval=3): the classic average moves only at steps 3, 6, ... (the latent-flow seed's
    decay 0.99 every 100 steps); the power-function average keeps its per-step profile."""
    from diffscale.engine.hooks.ema import EMAHook

    hook = EMAHook(stds=(0.10,), decays=(0.5,), interval=3)
    history = [torch.tensor([float(t)]) for t in range(1, 8)]
    ema = ParamEMA({"w": torch.zeros(1)}, list(hook.gammas) + list(hook.decays))
    for step, w in enumerate(history, start=1):
        ema.update({"w": w}, hook.betas(step))
    expected = 0.0  # independent: lerp toward theta_t at t = 3 and 6 only
    for step in (3, 6):
        expected = 0.5 * expected + 0.5 * float(step)
    assert ema.averages["decay_0.5"]["w"].item() == pytest.approx(expected)
    assert set(hook.betas(4)) == {"pf_0.100"} and set(hook.betas(6)) == {"pf_0.100", "decay_0.5"}
    with pytest.raises(Exception, match="interval"):
        EMAHook(interval=0)
