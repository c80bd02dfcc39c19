"""The discrete-time process (diffusion/ddpm.py) against closed forms computed here, independently."""

import math

import numpy as np
import pytest
import torch

from diffscale.diffusion.ddpm import (
    DDPMLoss,
    GaussianDiffusion,
    build_diffusion,
    discretized_gaussian_log_likelihood,
    get_named_beta_schedule,
    normal_kl,
)
from diffscale.errors import ConfigError

F64 = torch.float64


def test_linear_schedule_is_ddpm_scaled_by_1000_over_T():
    for T in (1000, 4000, 20):
        betas = get_named_beta_schedule("linear", T)
        assert betas.dtype == np.float64 and betas.shape == (T,)
        scale = 1000 / T
        assert betas[0] == pytest.approx(1e-4 * scale) and betas[-1] == pytest.approx(0.02 * scale)
        assert np.allclose(np.diff(betas), (0.02 - 1e-4) * scale / (T - 1))


def test_cosine_schedule_matches_alpha_bar_closed_form():
    T = 1000
    betas = get_named_beta_schedule("cosine", T)
    f = [math.cos(((t / T) + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(T + 1)]
    for t in (0, 1, 10, 500, 990):
        assert betas[t] == pytest.approx(min(1 - f[t + 1] / f[t], 0.999), rel=1e-12)
    assert betas[-1] == 0.999  # the clip at the singular end
    # alpha_bar of the process is the cosine's alpha_bar(t + 1) / alpha_bar(0) wherever no clip happened.
    ab = np.cumprod(1 - betas)
    assert ab[499] == pytest.approx(f[500] / f[0], rel=1e-10)


def test_unknown_schedule_and_bad_T_name_the_key():
    with pytest.raises(ConfigError, match="schedule"):
        get_named_beta_schedule("quadratic", 10)
    with pytest.raises(ConfigError, match="num_timesteps"):
        get_named_beta_schedule("cosine", 1)
    with pytest.raises(ConfigError, match="T >= 20"):
        get_named_beta_schedule("linear", 10)
    with pytest.raises(ConfigError, match="variance='learned_range'"):
        build_diffusion(variance="fixed_small", loss="hybrid")


def test_posterior_is_the_product_of_the_two_gaussians():
    """q(x_{t-1} | x_t, x_0) ∝ N(x_t; sqrt(a_t) x_{t-1}, b_t) N(x_{t-1}; sqrt(ab_{t-1}) x_0, 1 - ab_{t-1})."""
    d = build_diffusion("linear", 100, variance="fixed_small", loss="simple")
    gen = torch.Generator().manual_seed(0)
    x0, xt = torch.randn(5, 3, dtype=F64, generator=gen), torch.randn(5, 3, dtype=F64, generator=gen)
    t = torch.tensor([1, 5, 20, 60, 99])
    mean, var, log_var = d.q_posterior_mean_variance(x0, xt, t)
    for i, ti in enumerate(t.tolist()):
        beta = d.betas[ti]
        ab_prev = np.prod(1 - d.betas[:ti])
        precision = (1 - beta) / beta + 1 / (1 - ab_prev)
        expected_mean = (math.sqrt(1 - beta) / beta * xt[i] + math.sqrt(ab_prev) / (1 - ab_prev) * x0[i]) / precision
        assert torch.allclose(mean[i], expected_mean, rtol=1e-9, atol=1e-12)
        assert torch.allclose(var[i], torch.full((3,), 1 / precision, dtype=F64), rtol=1e-9)
        assert torch.allclose(log_var[i], torch.full((3,), math.log(1 / precision), dtype=F64), rtol=1e-9)
    # t = 0: the variance is 0 and its log is clipped to t = 1's.
    _, var0, log_var0 = d.q_posterior_mean_variance(x0[:1], xt[:1], torch.tensor([0]))
    assert float(var0[0, 0]) == 0.0 and float(log_var0[0, 0]) == pytest.approx(math.log(d.posterior_variance[1]))


def test_q_sample_moments():
    d = build_diffusion("cosine", 1000, variance="fixed_small", loss="simple")
    x0 = torch.full((200000, 1), 0.7)
    t = torch.full((200000,), 300)
    xt = d.q_sample(x0, t, torch.randn(200000, 1, generator=torch.Generator().manual_seed(1)))
    ab = np.prod(1 - d.betas[:301])
    assert float(xt.mean()) == pytest.approx(0.7 * math.sqrt(ab), abs=5e-3)
    assert float(xt.var()) == pytest.approx(1 - ab, rel=1e-2)


def test_normal_kl_against_torch_distributions():
    gen = torch.Generator().manual_seed(2)
    m1, m2 = torch.randn(50, dtype=F64, generator=gen), torch.randn(50, dtype=F64, generator=gen)
    lv1, lv2 = torch.randn(50, dtype=F64, generator=gen), torch.randn(50, dtype=F64, generator=gen)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                                 torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-10)


def test_discretized_likelihood_against_the_exact_normal_cdf():
    """The bin probability of 256-level data under N(mean, scale^2), computed with the exact CDF: the tanh
    approximation agrees to 1e-3 in probability, and each edge bin integrates the tail."""
    gen = torch.Generator().manual_seed(3)
    levels = torch.randint(0, 256, (400,), generator=gen).double()
    x = levels / 127.5 - 1
    x[:5], x[5:10] = -1.0, 1.0  # edge bins
    means = x + 0.02 * torch.randn(400, dtype=F64, generator=gen)
    log_scales = torch.full_like(x, math.log(0.01))
    ndtr = torch.special.ndtr
    hi, lo = (x + 1 / 255 - means) / 0.01, (x - 1 / 255 - means) / 0.01
    p = torch.where(x < -0.999, ndtr(hi), torch.where(x > 0.999, 1 - ndtr(lo), ndtr(hi) - ndtr(lo)))
    got = discretized_gaussian_log_likelihood(x, means, log_scales).exp()
    assert (got - p).abs().max() < 1e-3
    # The bins of one Gaussian sum to 1 over the 256 levels.
    grid = torch.arange(256, dtype=F64) / 127.5 - 1
    total = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, 0.3), torch.full_like(grid, -2.0)).exp()
    assert float(total.sum()) == pytest.approx(1.0, abs=1e-6)


def _reference_hybrid(d: GaussianDiffusion, out: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
                      noise: torch.Tensor, lam_bits: float | None, lam_nats: float | None):
    """The hybrid loss written out from the papers' formulas, example by example (float64)."""
    mse, vb = [], []
    for i in range(x0.shape[0]):
        ti = int(t[i])
        betas = d.betas
        ab = np.prod(1 - betas[: ti + 1])
        ab_prev = np.prod(1 - betas[:ti])
        xt = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * noise[i]
        eps, v = out[i, :1], out[i, 1:]
        mse.append(float(((eps - noise[i]) ** 2).mean()))
        beta_tilde = betas[ti] * (1 - ab_prev) / (1 - ab)
        log_bt = math.log(betas[1] * (1 - (1 - betas[0])) / (1 - (1 - betas[0]) * (1 - betas[1]))) if ti == 0 \
            else math.log(beta_tilde)
        frac = (v + 1) / 2
        log_var = frac * math.log(betas[ti]) + (1 - frac) * log_bt
        x0_pred = (xt - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        mean_p = (betas[ti] * math.sqrt(ab_prev) * x0_pred + (1 - ab_prev) * math.sqrt(1 - betas[ti]) * xt) / (1 - ab)
        if ti == 0:
            s = (0.5 * log_var).exp()
            Phi = lambda z: 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))  # noqa: E731
            xi = x0[i]
            plus, minus = Phi((xi + 1 / 255 - mean_p) / s), Phi((xi - 1 / 255 - mean_p) / s)
            prob = torch.where(xi < -0.999, plus, torch.where(xi > 0.999, 1 - minus, plus - minus))
            term = -prob.clamp(min=1e-12).log().mean()
        else:
            mean_q = (betas[ti] * math.sqrt(ab_prev) * x0[i] + (1 - ab_prev) * math.sqrt(1 - betas[ti]) * xt) / (1 - ab)
            var_q, var_p = beta_tilde, log_var.exp()
            term = (0.5 * (log_var - math.log(var_q) + var_q / var_p
                           + (mean_q - mean_p) ** 2 / var_p - 1)).mean()
        vb.append(float(term) * (lam_nats if lam_nats is not None else lam_bits / math.log(2)))
    return torch.tensor(mse, dtype=F64), torch.tensor(vb, dtype=F64)


@pytest.mark.parametrize("loss", ["hybrid", "hybrid_seed"])
def test_training_losses_match_a_hand_written_hybrid(loss):
    T = 50
    d = build_diffusion("linear", T, variance="learned_range", loss=loss, rescale_timesteps=False)
    gen = torch.Generator().manual_seed(4)
    B = 6
    x0 = (torch.randint(0, 256, (B, 1, 2, 2), generator=gen) / 127.5 - 1).double()
    x0[0, 0, 0, 0] = -1.0  # edge bins at t = 0
    noise = torch.randn(B, 1, 2, 2, dtype=F64, generator=gen)
    t = torch.tensor([0, 0, 1, 7, 30, 49])
    out = torch.cat([torch.randn(B, 1, 2, 2, dtype=F64, generator=gen),
                     torch.rand(B, 1, 2, 2, dtype=F64, generator=gen) * 2 - 1], dim=1)
    seen_t = []

    def model_fn(x_t, t_in):
        seen_t.append(t_in)
        return out

    terms = d.training_losses(model_fn, x0, t, noise)
    assert torch.equal(seen_t[0], t.float())  # rescale_timesteps=False: the raw t
    lam = dict(hybrid=(T / 1000, None), hybrid_seed=(None, 0.001))[loss]
    mse, vb = _reference_hybrid(d, out, x0, t, noise, *lam)
    assert torch.allclose(terms["mse"].double(), mse, rtol=1e-5, atol=1e-7)
    assert torch.allclose(terms["vb"].double(), vb, rtol=1e-4, atol=1e-8)
    assert torch.allclose(terms["loss"].double(), mse + vb, rtol=1e-4, atol=1e-7)


def test_vb_trains_only_the_variance():
    d = build_diffusion("cosine", 100, variance="learned_range", loss="hybrid")
    x0 = torch.rand(4, 3, 2, 2) * 2 - 1
    out = torch.randn(4, 6, 2, 2, requires_grad=True)
    terms = d.training_losses(lambda x, t: out, x0, torch.tensor([0, 3, 50, 99]), torch.randn(4, 3, 2, 2))
    (grad_vb,) = torch.autograd.grad(terms["vb"].sum(), out, retain_graph=True)
    assert grad_vb[:, :3].abs().max() == 0 and grad_vb[:, 3:].abs().max() > 0
    (grad_mse,) = torch.autograd.grad(terms["mse"].sum(), out)
    assert grad_mse[:, 3:].abs().max() == 0


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_an_exact_prediction_recovers_x0(prediction):
    d = build_diffusion("cosine", 200, prediction=prediction, variance="fixed_large", loss="simple")
    gen = torch.Generator().manual_seed(5)
    x0, noise = torch.randn(8, 3, dtype=F64, generator=gen), torch.randn(8, 3, dtype=F64, generator=gen)
    t = torch.randint(0, 200, (8,), generator=gen)
    target = d.target(x0, t, noise)
    terms = d.training_losses(lambda x, ti: target, x0, t, noise)
    assert float(terms["loss"].max()) < 1e-10
    mv = d.p_mean_variance(target, d.q_sample(x0, t, noise), t)
    assert torch.allclose(mv.pred_xstart, x0, atol=1e-8) and torch.allclose(mv.eps, noise, atol=1e-6)
    # fixed_large: beta_t, but beta_tilde_1 at t = 0
    expected = np.where(t.numpy() == 0, d.posterior_variance[1], d.betas[t.numpy()])
    assert np.allclose(mv.variance[:, 0].numpy(), expected)


def test_label_dropout_and_the_condition():
    obj = DDPMLoss(num_timesteps=100, variance="fixed_small", loss="simple", p_uncond=0.2)
    x = torch.zeros(20000, 2)
    cond = obj.sample_condition(x, torch.Generator().manual_seed(0))
    assert set(cond) == {"t", "noise", "weight", "drop"}
    assert float(cond["drop"].float().mean()) == pytest.approx(0.2, abs=0.01)
    assert int(cond["t"].min()) == 0 and int(cond["t"].max()) == 99 and torch.all(cond["weight"] == 1)
    seen = {}

    def model(x_t, t_in, labels):
        seen["labels"] = labels
        return torch.zeros_like(x_t)

    obj.per_example(model, {"x": x, "label": torch.ones(20000, dtype=torch.long)}, cond)
    assert torch.equal(seen["labels"] == -1, cond["drop"])
    with pytest.raises(ConfigError, match="p_uncond"):
        DDPMLoss(p_uncond=1.0)
