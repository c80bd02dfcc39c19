"""NLL: bits per dimension of the full variational bound of a DDPM model on held-out data (Ho et al. 2020 eq. 5;
improved DDPM, Nichol & Dhariwal 2021, Sec. 2 and its `calc_bpd_loop`, reimplemented here from the formula).

For a held-out example x_0 (an 8-bit image scaled to [-1, 1], D elements) and the T steps t = 0..T-1 of
diffusion/ddpm.py (its step t is the paper's x_{t+1}), every term in bits per element (nats / (D ln 2)):

    bpd(x_0) = L_prior + L_decoder + sum_{t=1}^{T-1} L_t
    L_prior   = KL(q(x_{T-1} | x_0) || N(0, I))                       no network
    L_t       = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),  t > 0   at one draw x_t ~ q(x_t | x_0)
    L_decoder = -log p(x_0 | x_t at t = 0)                              the discretised Gaussian over 256 levels

(`GaussianDiffusion.vb_terms_bpd` with clip_denoised=True gives L_t and L_decoder, `prior_bpd` L_prior.) One draw of
x_t per example and step makes it an unbiased estimate of the bound of every example, as improved DDPM reports it.
Every step counts: there is no stride, the bound of a T-step model is the sum over all T. Reported, as means over
every example of every rank: `nll_bpd`, `nll_prior_bpd`, `nll_decoder_bpd`, `nll_vb_bpd` (the sum over t > 0).

Published figures (improved DDPM, Table 3; models trained on L_vb, T = 4000): 2.94 bpd on CIFAR-10 (test set),
3.53 on ImageNet 64x64 (validation set). Cost: T network calls per batch of examples, e.g. CIFAR-10's 10,000
test images at T = 4000 and batch_gpu 250 are 40 x 4000 forward passes of 250 images, shared by the ranks.

Noise. Example i (its position in the held-out order) draws its noise of steps 0, 1, ... from its own CPU
generator torch.Generator().manual_seed(seed + i), in chunks of steps (utils/seeding.py, PerExampleNoise: one
call per example per chunk, a chunk length that depends only on the image shape; a whole small image's T steps
are torch.randn(T, C, H, W)). So the result does not depend on batch_gpu, t_batch, the world size or the device;
`seed` fixes it.

Held-out data. `data` is a dataset config (as data.val; e.g. dict(type='MDSImageStream', path=..., num_workers=2)),
built at every evaluation with batch_gpu, rank, world_size, seed and device (the config's own keys win), so
construction is cheap. Rank r of W takes the examples r, r + W, ... of the first `num_examples` of the stream's
order (MDSImageStream: its epoch-0 order, shuffled by `seed` unless shuffle=False); they must come from one epoch.

Network hand-over (an extension of the contract of evaluation/base.py). NLL reads no samples: `input = None`
(pipeline.check_inputs accepts such an evaluator whatever a run produces, and update() ignores any batch it is fed).
It scores the model itself: the *unguided* DDPM network forward(x_t, model_time(t), labels) -> C or 2C channels,
given the held-out examples' own labels when it declares label_dim > 0 (guidance changes a sampler, not the model's
likelihood). `needs_network = True` says so: the caller hands the network over with `set_network(net)` before the
evaluation (tools/test.py does, with the sampling part at test_cfg.ema); the hand-over holds for that one
evaluation (begin ... compute). Without one, `begin(denoiser)` takes the denoiser if it is the network itself (an
nn.Module: `guided()` returns the raw network when there is no guidance, as in the EvalHook without guidance); a
guided denoiser, or none (tools/test.py --images), is a ConfigError.

The diffusion keywords must be the ones the model was trained with (the run's DDPMLoss): the bound is the one of
that process, whatever the sampler.
"""

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from diffscale.diffusion.ddpm import GaussianDiffusion, build_diffusion
from diffscale.errors import ConfigError
from diffscale.evaluation.base import Evaluator
from diffscale.registry import DATASETS, EVALUATORS, build, lookup
from diffscale.utils.dist import all_reduce_sum, get_rank, get_world_size
from diffscale.utils.seeding import PerExampleNoise

Network = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
RANGE_TOLERANCE = 1e-6  # held-out values may exceed [-1, 1] by rounding only


def _positive_int(key: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"NLL.{key}: expected a positive integer, got {value!r}")
    return value


@torch.no_grad()
def bound_terms(net: Network, diffusion: GaussianDiffusion, x_start: torch.Tensor, labels: torch.Tensor | None,
                generators: list[torch.Generator], t_batch: int = 1) -> dict[str, torch.Tensor]:
    """{'prior', 'decoder', 'vb'}: float64 [B] in bits per element of examples x_start [B, C, ...] (in [-1, 1]),
    `generators` [B] giving each example's noise, step after step. One network call per `t_batch` steps: the
    batch is stacked t_batch times (examples of step t0 first, then t0 + 1, ...)."""
    B, T, device = x_start.shape[0], diffusion.num_timesteps, x_start.device
    decoder = torch.zeros(B, dtype=torch.float64, device=device)
    vb = torch.zeros(B, dtype=torch.float64, device=device)
    stream = PerExampleNoise(generators, tuple(x_start.shape[1:]), T, device)
    for t0 in range(0, T, t_batch):
        k = min(t_batch, T - t0)
        noise = torch.cat([stream.next() for _ in range(k)])
        t = torch.arange(t0, t0 + k, device=device).repeat_interleave(B)  # step-major, as `noise`
        x0 = x_start.repeat(k, *([1] * (x_start.ndim - 1)))
        x_t = diffusion.q_sample(x0, t, noise)
        out = net(x_t, diffusion.model_time(t), None if labels is None else labels.repeat(k))
        bits = diffusion.vb_terms_bpd(out, x0, x_t, t, clip_denoised=True)[0].double().view(k, B)
        if t0 == 0:  # step 0 is the decoder's term, the others are KLs
            decoder += bits[0]
            bits = bits[1:]
        vb += bits.sum(0)
    return {"prior": diffusion.prior_bpd(x_start).double(), "decoder": decoder, "vb": vb}


@EVALUATORS.register_module()
class NLL(Evaluator):
    """Bits per dimension of the variational bound on `num_examples` held-out examples (module docstring)."""

    name = "nll"
    input = None  # reads no samples
    needs_network = True  # set_network(net): the unguided network, before the evaluation

    def __init__(
        self,
        data: dict | None = None,  # held-out dataset config, e.g. dict(type='MDSImageStream', path='data/c10-test')
        num_examples: int = 10000,  # held-out examples in total, shared by the ranks (CIFAR-10's test set: 10,000)
        batch_gpu: int = 64,  # examples per rank per batch
        t_batch: int = 1,  # steps per network call (t_batch x batch_gpu inputs): faster where memory allows
        schedule: str = "cosine",  # the diffusion of the model's DDPMLoss: schedule, T, prediction, variance, ...
        num_timesteps: int = 1000,
        prediction: str = "eps",
        variance: str = "learned_range",
        rescale_timesteps: bool = True,
        seed: int = 0,  # of the noise (and of the stream's order); fixed, so results are reproducible
        device: str | torch.device = "cpu",
    ):
        super().__init__(device)
        if not isinstance(data, dict) or "type" not in data:
            raise ConfigError(f"NLL.data: expected a dataset config dict with a 'type' key, e.g. "
                              f"dict(type='MDSImageStream', path='data/cifar10-test'), got {data!r}")
        lookup(DATASETS, data["type"], "NLL.data")  # an unknown type fails here, not after training
        self.data = dict(data)
        self.num_examples = _positive_int("num_examples", num_examples)
        self.batch_gpu = _positive_int("batch_gpu", batch_gpu)
        self.t_batch = _positive_int("t_batch", t_batch)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"NLL.seed: expected a non-negative integer, got {seed!r}")
        self.seed = seed
        try:
            self.diffusion = build_diffusion(schedule, num_timesteps, prediction, variance, "simple",
                                             rescale_timesteps)
        except ConfigError as exc:  # its messages start with the key: name it as this evaluator's
            raise ConfigError(f"NLL.{exc}") from None
        self._handed: Network | None = None  # set_network's, for the next evaluation
        self._net: Network | None = None  # this evaluation's

    def set_network(self, net: Network) -> None:
        """The unguided network forward(x_t, model_time(t), labels) for the next evaluation."""
        self._handed = net

    def begin(self, denoiser=None) -> None:
        if self._handed is not None:
            self._net = self._handed
        elif isinstance(denoiser, nn.Module):  # guided() returned the network itself: there is no guidance
            self._net = denoiser
        else:
            raise ConfigError("NLL scores the model's own network: it needs the unguided network, handed over with "
                              "set_network(net) (tools/test.py with a CHECKPOINT does; --images has no network), "
                              "or an unguided denoiser at begin()")

    def update(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Samples are not read (other evaluators of the same run may need them)."""

    def held_out(self, rank: int,
                 world_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """This rank's batches (example positions int64 [n], x float32 [n, ...] in [-1, 1], labels int64 [n] or
        None)."""
        share = len(range(rank, self.num_examples, world_size))
        stream = build(DATASETS, self.data, "NLL.data", batch_gpu=self.batch_gpu, rank=rank, world_size=world_size,
                       seed=self.seed, device=self.device, config_key="NLL.data")
        total = getattr(stream, "num_samples", None)
        per_rank = -(-self.num_examples // world_size)
        if total is not None and per_rank > total // world_size:
            raise ConfigError(f"NLL.num_examples: {self.num_examples} examples on {world_size} rank(s) take "
                              f"{per_rank} per rank; the held-out set has {total} ({total // world_size} per rank)")
        done = 0
        try:
            while done < share:
                batch = next(stream)
                n = min(share - done, batch["x"].shape[0])
                x = batch["x"][:n].to(self.device, torch.float32)
                positions = rank + world_size * torch.arange(done, done + n, dtype=torch.int64)
                labels = batch.get("label")
                yield positions, x, None if labels is None else labels[:n].to(self.device)
                done += n
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # stop its loader workers

    @torch.no_grad()
    def compute(self, ref: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        """The bound on this rank's share, summed over every rank (collective: every rank returns the same)."""
        net, self._handed, self._net = self._net, None, None  # the hand-over holds for one evaluation
        if net is None:
            raise ConfigError("NLL: compute() without begin(): no network to score")
        conditional = int(getattr(net, "label_dim", 0)) > 0
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)  # examples, prior, decoder, vb, bad batches
        was_training = net.training if isinstance(net, nn.Module) else False
        if isinstance(net, nn.Module):
            net.eval()
        try:
            for positions, x, labels in self.held_out(get_rank(), get_world_size()):
                if x.min().item() < -1 - RANGE_TOLERANCE or x.max().item() > 1 + RANGE_TOLERANCE:
                    sums[4] = 1  # raised below on every rank: one rank raising alone would leave the others waiting
                    break
                gens = [torch.Generator().manual_seed(self.seed + int(i)) for i in positions]
                terms = bound_terms(net, self.diffusion, x, labels if conditional else None, gens, self.t_batch)
                sums[:4] += torch.stack([torch.tensor(float(x.shape[0]), dtype=torch.float64, device=self.device),
                                         terms["prior"].sum(), terms["decoder"].sum(), terms["vb"].sum()])
        finally:
            if isinstance(net, nn.Module):
                net.train(was_training)
        n, prior, decoder, vb, bad = all_reduce_sum(sums).tolist()
        if bad:
            raise ConfigError("NLL.data: values outside [-1, 1]; the bound's decoder is over 8-bit images scaled to "
                              "[-1, 1] (float data such as latents have no such likelihood)")
        return {"nll_bpd": (prior + decoder + vb) / n, "nll_prior_bpd": prior / n, "nll_decoder_bpd": decoder / n,
                "nll_vb_bpd": vb / n}
