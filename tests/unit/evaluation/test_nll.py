"""The NLL evaluator (evaluation/nll.py): its bound against one written out here in float64 from the formulas
(Gaussian KL, the tanh-CDF discretised decoder, the prior), the exact-posterior case where every KL vanishes,
independence of batch_gpu / t_batch and the ranks' disjoint shares, config errors, the network hand-over, and
tools/test.py scoring a checkpoint with NLL alone (no sampling)."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from diffscale.errors import ConfigError
from diffscale.evaluation.nll import NLL
from diffscale.evaluation.pipeline import run_evaluation
from tests.data_helpers import make_mds
from tests.helpers import ROOT

LN2 = math.log(2.0)


class ImageArrayStream:
    """Held-out batches like MDSImageStream's with shuffle=False, from uint8 images [N, C, H, W] in memory (a
    config may name a class as `type`): rank r of W takes images r, r + W, ..., labels i % 4. MDS shards cost
    the `streaming` package's import (seconds); the MDS tests below are the ones that need the real reader."""

    def __init__(self, images: np.ndarray, batch_gpu: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 device="cpu"):
        from diffscale.data.streaming import scale_images

        self.num_samples, self.batch_gpu, self.device, self.pos = len(images), batch_gpu, device, 0
        self.x = torch.from_numpy(scale_images(images))[rank::world_size]
        self.labels = (torch.arange(len(images)) % 4)[rank::world_size]

    def __next__(self) -> dict:
        take = torch.arange(self.pos, self.pos + self.batch_gpu) % len(self.x)
        self.pos += self.batch_gpu
        return {"x": self.x[take].to(self.device), "label": self.labels[take].to(self.device)}


def images(n: int, shape=(3, 4, 4), seed: int = 0) -> np.ndarray:
    """n random uint8 images, the extreme levels 0 and 255 included (the decoder's open-ended bins)."""
    x = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    x[0, 0, 0, :2] = (0, 255)
    return x


def data_cfg(path, **kw) -> dict:
    return dict(type="MDSImageStream", path=str(path), num_workers=0, **kw)


def evaluate(ev: NLL, net) -> dict:
    ev.set_network(net)
    return run_evaluation([ev], iter(()))["metrics"]


class LinearEps(nn.Module):
    """eps_hat = 0.3 x_t + 0.1 t / 1000: a fixed network the test evaluates in float64 too."""

    def forward(self, x, t, labels=None):
        return 0.3 * x + 0.1 * (t.to(x.dtype) / 1000).view(-1, *[1] * (x.ndim - 1))


# ------------------------------------------------------------------------------ the bound, by hand in float64
def tanh_cdf(z: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the normal CDF that improved DDPM's decoder likelihood is defined with."""
    return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))


def gauss_kl(m1, v1, m2, v2):
    """KL(N(m1, v1) || N(m2, v2)) elementwise, nats."""
    return 0.5 * (torch.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)


def hand_bound(x0: torch.Tensor, net, T: int, seed: int, index: int) -> dict[str, float]:
    """Bits per element of one example x0 [C, H, W] (float64) under the linear schedule and fixed_small variance,
    with the noise convention of nll.py: a small image's T steps of noise are randn(T, C, H, W) of
    Generator(seed + index)."""
    betas = torch.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    post_var = betas * (1 - ab_prev) / (1 - ab)  # beta_tilde_t; the decoder (t = 0) uses beta_tilde_1
    all_noise = torch.randn((T, *x0.shape), generator=torch.Generator().manual_seed(seed + index)).double()
    vb = decoder = 0.0
    for t in range(T):
        noise = all_noise[t]
        x_t = ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * noise
        eps = net(x_t[None], torch.tensor([t * 1000.0 / T], dtype=torch.float64))[0]
        x0_pred = ((x_t - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()).clamp(-1, 1)

        def post_mean(x_start, t=t, x_t=x_t):
            return (betas[t] * ab_prev[t].sqrt() * x_start
                    + (1 - ab_prev[t]) * (1 - betas[t]).sqrt() * x_t) / (1 - ab[t])

        var = post_var[t] if t > 0 else post_var[1]
        if t > 0:
            vb += gauss_kl(post_mean(x0), post_var[t], post_mean(x0_pred), var).mean().item() / LN2
            continue
        mean, sd = post_mean(x0_pred), var.sqrt()
        upper, lower = tanh_cdf((x0 - mean + 1 / 255) / sd), tanh_cdf((x0 - mean - 1 / 255) / sd)
        prob = torch.where(x0 < -0.999, upper, torch.where(x0 > 0.999, 1 - lower, upper - lower))
        decoder = -torch.log(prob.clamp(min=1e-12)).mean().item() / LN2
    prior = gauss_kl(ab[-1].sqrt() * x0, 1 - ab[-1], torch.zeros_like(x0), torch.ones(1, dtype=torch.float64))
    prior = prior.mean().item() / LN2
    return {"prior": prior, "decoder": decoder, "vb": vb, "total": prior + decoder + vb}


def test_bound_matches_the_formula_in_float64():
    x = images(6)
    data = dict(type=ImageArrayStream, images=x)
    T, seed = 25, 7  # linear betas 0.004 .. 0.8
    ev = NLL(data=data, num_examples=5, batch_gpu=2, schedule="linear", num_timesteps=T, variance="fixed_small",
             rescale_timesteps=True, seed=seed)
    got = evaluate(ev, LinearEps())
    x0 = torch.from_numpy(x).double() / 127.5 - 1
    hand = [hand_bound(x0[i], LinearEps(), T, seed, i) for i in range(5)]  # example i is image i
    expect = {k: sum(h[k] for h in hand) / 5 for k in ("total", "prior", "decoder", "vb")}
    assert got["nll_bpd"] == pytest.approx(expect["total"], rel=1e-4, abs=1e-4)
    assert got["nll_prior_bpd"] == pytest.approx(expect["prior"], rel=1e-5, abs=1e-6)
    assert got["nll_decoder_bpd"] == pytest.approx(expect["decoder"], rel=1e-4, abs=1e-4)
    assert got["nll_vb_bpd"] == pytest.approx(expect["vb"], rel=1e-4, abs=1e-4)
    assert expect["vb"] > 0.01 and expect["decoder"] > 0.1  # every term is really there
    other = evaluate(NLL(data=data, num_examples=5, batch_gpu=2, schedule="linear", num_timesteps=T,
                         variance="fixed_small", seed=seed + 1), LinearEps())
    assert other["nll_bpd"] != got["nll_bpd"]  # the noise is the seed's


class ExactEps(nn.Module):
    """The noise that took the constant image c to x_t: the true posterior is then the model's."""

    def __init__(self, c: float, alphas_cumprod: np.ndarray):
        super().__init__()
        self.c, self.ab = c, torch.from_numpy(alphas_cumprod)

    def forward(self, x, t, labels=None):
        ab = self.ab[t.round().long().cpu()].to(x.device).view(-1, 1, 1, 1)
        return ((x.double() - ab.sqrt() * self.c) / (1 - ab).sqrt()).to(x.dtype)


def test_exact_posterior_leaves_prior_and_decoder():
    """A constant image at level 100 and a network that predicts eps exactly: with fixed_small every KL (t > 0)
    is 0, the decoder's mean is the pixel itself and nll_bpd = prior + decoder, both in closed form."""
    level, T = 100, 10
    data = dict(type=ImageArrayStream, images=np.full((4, 3, 4, 4), level, np.uint8))
    ev = NLL(data=data, num_examples=4, batch_gpu=3, schedule="cosine", num_timesteps=T, variance="fixed_small",
             rescale_timesteps=False, seed=3)
    d = ev.diffusion
    c = level / 127.5 - 1
    got = evaluate(ev, ExactEps(c, d.alphas_cumprod))
    assert abs(got["nll_vb_bpd"]) < 1e-6
    sd = math.sqrt(d.posterior_variance[1])  # the decoder's sigma (beta_tilde_1)
    z = torch.tensor((1 / 255) / sd, dtype=torch.float64)
    decoder = -math.log((tanh_cdf(z) - tanh_cdf(-z)).item()) / LN2
    ab = d.alphas_cumprod[-1]
    prior = 0.5 * (-math.log(1 - ab) + (1 - ab) + ab * c**2 - 1) / LN2
    assert got["nll_decoder_bpd"] == pytest.approx(decoder, rel=1e-4)
    assert got["nll_prior_bpd"] == pytest.approx(prior, rel=1e-4, abs=1e-8)  # ab_{T-1} ~ 2e-5: float32 digits
    assert got["nll_bpd"] == pytest.approx(prior + decoder, rel=1e-4)


class SmallConv(nn.Module):
    """A conditional conv net with a learned-range variance output (2C channels): labels and batching matter."""

    label_dim = 4

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.emb = nn.Embedding(4, 6)

    def forward(self, x, t, labels):
        h = self.conv(x) + self.emb(labels)[:, :, None, None] + (t / 1000)[:, None, None, None]
        return torch.cat([0.5 * torch.tanh(h[:, :3]), torch.tanh(h[:, 3:])], 1)


def test_independent_of_batch_gpu_and_t_batch():
    kw = dict(data=dict(type=ImageArrayStream, images=images(16)), num_examples=7, schedule="cosine",
              num_timesteps=12, variance="learned_range")
    a = evaluate(NLL(batch_gpu=4, t_batch=1, **kw), SmallConv())
    b = evaluate(NLL(batch_gpu=3, t_batch=5, **kw), SmallConv())
    c = evaluate(NLL(batch_gpu=7, t_batch=12, **kw), SmallConv())
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-6) and c[k] == pytest.approx(a[k], rel=1e-6), k
    assert set(a) == {"nll_bpd", "nll_prior_bpd", "nll_decoder_bpd", "nll_vb_bpd"}
    assert a["nll_bpd"] == pytest.approx(a["nll_prior_bpd"] + a["nll_decoder_bpd"] + a["nll_vb_bpd"])


def test_ranks_take_disjoint_shares(tmp_path):
    """Rank r of W scores positions r, r + W, ... of the first num_examples: together, those of one rank."""
    path, _, _ = make_mds(tmp_path / "held", num_samples=16, shape=(3, 4, 4))
    ev = NLL(data=data_cfg(path), num_examples=7, batch_gpu=3)
    one = {int(i): x for pos, xs, _ in ev.held_out(0, 1) for i, x in zip(pos, xs, strict=True)}
    two = {int(i): x for r in (0, 1) for pos, xs, _ in ev.held_out(r, 2) for i, x in zip(pos, xs, strict=True)}
    assert sorted(one) == sorted(two) == list(range(7))
    assert all(torch.equal(one[i], two[i]) for i in one)


class FloatStream(ImageArrayStream):
    """Values in [-3, 3], as latents would be."""

    def __init__(self, batch_gpu: int, rank: int = 0, world_size: int = 1, seed: int = 0, device="cpu"):
        super().__init__(images(4), batch_gpu, rank, world_size, seed, device)
        self.x = 3 * self.x


def test_bad_config_names_the_key(tmp_path):
    data = data_cfg(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"NLL\.num_examples"):
        NLL(data=data, num_examples=0)
    with pytest.raises(ConfigError, match=r"NLL\.variance"):
        NLL(data=data, variance="learned")
    with pytest.raises(ConfigError, match=r"NLL\.t_batch"):
        NLL(data=data, t_batch=0)
    with pytest.raises(ConfigError, match=r"NLL\.data"):
        NLL(data=None)
    with pytest.raises(ConfigError, match=r"NLL\.data\.type"):
        NLL(data=dict(type="NoSuchStream"))
    with pytest.raises(ConfigError, match=r"NLL\.num_examples: 5 examples"):  # more than the held-out set
        evaluate(NLL(data=dict(type=ImageArrayStream, images=images(4)), num_examples=5, num_timesteps=4,
                     variance="fixed_small"), LinearEps())
    with pytest.raises(ConfigError, match=r"NLL\.data: values outside"):  # latents are not 8-bit images
        evaluate(NLL(data=dict(type=FloatStream), num_examples=2, num_timesteps=4, variance="fixed_small"),
                 LinearEps())


def test_network_hand_over():
    ev = NLL(data=dict(type="MDSImageStream", path="unused"), variance="fixed_small")
    with pytest.raises(ConfigError, match="unguided network"):
        ev.begin(lambda x, t, labels: x)  # a guided denoiser is not the model
    with pytest.raises(ConfigError, match="unguided network"):
        ev.begin(None)  # tools/test.py --images
    ev.begin(LinearEps())  # guided() without guidance returns the network itself
    ev.set_network(LinearEps())
    ev.begin(lambda x, t, labels: x)  # the hand-over wins over the denoiser
    ev.update(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), None)  # samples of other evaluators are ignored


def test_test_tool_scores_a_checkpoint_without_sampling(tmp_path, capsys, one_thread):
    """tools/test.py CONFIG EXPORT with NLL alone: no samples generated, the numbers of the evaluator run on the
    same network here (handed the raw network, labels used)."""
    from safetensors.torch import save_file

    from diffscale.registry import MODELS
    from tests.e2e.test_test_tool import load_test_tool

    path, _, _ = make_mds(tmp_path / "held", num_samples=4, shape=(3, 8, 8))
    model = dict(type="DDPMUNet", preset="tiny", img_resolution=8, emb_ch=8, t_dim=16, c_dim=16)
    torch.manual_seed(0)
    net = MODELS.build(model).eval()
    save_file({f"model.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "net.safetensors"))
    nll = dict(type="NLL", data=data_cfg(path), num_examples=3, batch_gpu=4, num_timesteps=4, t_batch=2)
    (tmp_path / "cfg.py").write_text(
        f"_base_ = [{str(ROOT / 'configs/toy/tree2d_baseline.py')!r}]\n"
        f"model = dict(_delete_=True, **{model!r})\n"
        f"test_cfg = dict(ema=None)\n"
        f"evaluators = [{nll!r}]\n")
    code = load_test_tool().main([str(tmp_path / "cfg.py"), str(tmp_path / "net.safetensors"), "--work-dir",
                                  str(tmp_path / "out")])
    assert code == 0 and "nll_bpd" in capsys.readouterr().out
    record = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert record["num"] == 0  # nothing was sampled
    direct = evaluate(NLL(**{k: v for k, v in nll.items() if k != "type"}), net)
    assert record["metrics"] == pytest.approx(direct, rel=1e-6)
