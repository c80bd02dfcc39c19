"""DDPM ancestral and DDIM samplers (sampling/ddpm.py): DDIM's limits, strides, guidance and step noise."""

import numpy as np
import pytest
import torch

from diffscale.diffusion.ddpm import build_diffusion
from diffscale.errors import ConfigError
from diffscale.sampling.ddpm import DDIMSampler, DDPMSampler, strided_timesteps
from diffscale.sampling.generate import generate

F64 = torch.float64
KW = dict(schedule="cosine", num_timesteps=200, prediction="eps", variance="fixed_small")


def eps_net(x, t, labels):
    """A smooth stand-in eps-predictor that depends on x, t and the label."""
    shift = 0.0 if labels is None else 0.1 * (labels.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) + 1)
    return torch.tanh(x) * 0.5 + 1e-3 * t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) + shift


def test_ddim_eta1_over_all_steps_is_ancestral_ddpm():
    noise = torch.randn(6, 2, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    seeds = torch.arange(6) + 100
    labels = torch.arange(6) % 3
    for clip in (False, True):
        a = DDPMSampler(**KW, clip_denoised=clip)(eps_net, noise, labels, seeds=seeds)
        b = DDIMSampler(**KW, num_steps=200, eta=1.0, clip_denoised=clip)(eps_net, noise, labels, seeds=seeds)
        assert torch.allclose(a, b, atol=1e-10), (a - b).abs().max()


def test_ddim_eta0_is_deterministic_and_ancestral_is_not():
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    ddim = DDIMSampler(**KW, num_steps=20, eta=0.0)
    assert torch.equal(ddim(eps_net, noise, seeds=torch.arange(4)), ddim(eps_net, noise, seeds=torch.arange(4) + 9))
    ddpm = DDPMSampler(**KW)
    a, b = ddpm(eps_net, noise, seeds=torch.arange(4)), ddpm(eps_net, noise, seeds=torch.arange(4) + 9)
    assert not torch.allclose(a, b)
    assert torch.equal(a, ddpm(eps_net, noise, seeds=torch.arange(4)))  # but reproducible from the seeds


def test_ddim_eta0_follows_the_probability_flow_formula_by_hand():
    """Two strided DDIM steps written out (Song et al. eq. 12 with sigma = 0) in float64."""
    d = build_diffusion(**KW, loss="simple")
    x = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    out = DDIMSampler(**KW, step_size=100, eta=0.0, clip_denoised=False)(eps_net, x)
    ab = d.alphas_cumprod
    for t_cur, t_prev in ((100, 0), (0, None)):
        t_in = torch.full((3,), t_cur * 1000 / 200, dtype=F64)
        eps = eps_net(x, t_in, None)
        x0 = (x - np.sqrt(1 - ab[t_cur]) * eps) / np.sqrt(ab[t_cur])
        x = x0 if t_prev is None else np.sqrt(ab[t_prev]) * x0 + np.sqrt(1 - ab[t_prev]) * eps
    assert torch.allclose(out, x, atol=1e-10)


def test_strided_timesteps():
    assert list(strided_timesteps(1000, 100, None)) == list(range(0, 1000, 10))
    assert list(strided_timesteps(1000, None, 250)) == [0, 250, 500, 750]
    tau = strided_timesteps(1000, 63, None)
    assert len(set(tau)) == 63 and tau[0] == 0 and tau[-1] == 984 and np.all(np.diff(tau) >= 15)
    assert len(strided_timesteps(50, None, None)) == 50
    with pytest.raises(ConfigError, match="not both"):
        strided_timesteps(1000, 10, 10)
    with pytest.raises(ConfigError, match="num_steps"):
        DDIMSampler(**KW, num_steps=500)


def test_guidance_mixes_the_prediction_channels_and_keeps_the_learned_variance():
    kw = dict(KW, variance="learned_range")
    calls = []

    def net(x, t, labels):
        calls.append(labels)
        v = torch.full_like(x, 0.3)
        return torch.cat([eps_net(x, t, labels), v], dim=1)

    def guide(x, t, labels):
        return torch.cat([eps_net(x, t, None), torch.full_like(x, -5.0)], dim=1)  # its variance must be ignored

    noise = torch.randn(4, 2, 3)
    sampler = DDIMSampler(**kw, num_steps=10, eta=1.0, guidance=3.0)
    guided = sampler(net, noise, torch.arange(4), guide=guide)

    def by_hand(x, t, labels):
        e_c, e_u = eps_net(x, t, labels), eps_net(x, t, None)
        return torch.cat([e_u + 3.0 * (e_c - e_u), torch.full_like(x, 0.3)], dim=1)

    expected = DDIMSampler(**kw, num_steps=10, eta=1.0)(by_hand, noise, torch.arange(4))
    assert torch.allclose(guided, expected, atol=1e-5)
    # the seed's w maps onto ours as w = 1 + w_seed: (1 + w_seed) eps_c - w_seed eps_null
    w_seed = 2.0
    e_c, e_u = torch.tensor(1.0), torch.tensor(0.25)
    assert float(e_u + (1 + w_seed) * (e_c - e_u)) == pytest.approx(float((1 + w_seed) * e_c - w_seed * e_u))


def test_learned_variance_sets_the_ddim_noise():
    """eta * sqrt(Sigma_theta): with v = 1 the added noise is eta * sqrt(beta) of the respaced step."""
    kw = dict(KW, variance="learned_range")

    def net(x, t, labels):
        return torch.cat([torch.zeros_like(x), torch.ones_like(x)], dim=1)

    noise = torch.zeros(2000, 1, dtype=F64)
    s = DDIMSampler(**kw, num_steps=2, eta=0.5, clip_denoised=False)
    out = s(net, noise, seeds=torch.arange(2000))
    # x = 0 and eps = 0: x0 = 0 at the first step; the sample is the first step's noise, then x0 of the last step.
    ab = s.diffusion.alphas_cumprod
    beta_first = s.diffusion.betas[1]
    std_after_first = 0.5 * np.sqrt(beta_first)
    # last step (t = 0 of the spaced process) returns x0 = x / sqrt(ab_0) with eps = 0
    assert float(out.std()) == pytest.approx(std_after_first / np.sqrt(ab[0]), rel=0.05)


def test_samples_do_not_depend_on_the_batching():
    """The step noise is drawn per sample from its seed: generate() gives the same samples at any batch size."""
    sampler = DDPMSampler(**dict(KW, num_timesteps=50))

    def run(batch_gpu):
        return torch.cat([b.samples for b in generate(eps_net, sampler, 6, batch_gpu, (2,), images=False, seed=7)])

    assert torch.equal(run(6), run(4)) and torch.equal(run(6), run(1))
