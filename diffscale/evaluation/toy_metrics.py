"""Metrics of a denoiser on the 2D tree toy, computed against the exact mixture (AJEST work, toy example):

- `loss_sigma_<s>`: EDM-weighted denoising error lambda(s) ||D(x + s n) - x||^2 at fixed noise levels;
- `denoise_l2_sigma_<s>`: mean L2 distance between D(x + s n) and the exact posterior mean E[x | x + s n];
- `outer_loss`: the weighted error on examples from the outer branches (the two deepest levels), averaged
  over the noise levels: the part of the distribution that is rare and hard;
- `support_share`: generated samples that land in the ground-truth support, counted once per grid cell
  (so mode collapse does not score), over min(samples, support cells);
- `class_accuracy`: share of class-conditional samples whose most likely class under the exact mixture is
  the class they were conditioned on.
A guide and a weight w give the guided denoiser D_guide + w (D - D_guide) for every metric.
`ToyMetrics` is the same through the evaluator interface (evaluation/base.py).
"""

import torch

from diffscale.data.gmm import GaussianMixture2D
from diffscale.data.toy import EXTENT, TREE_DEPTH, tree_mixture
from diffscale.evaluation.base import Evaluator
from diffscale.registry import EVALUATORS
from diffscale.sampling.edm_heun import EDMHeunSampler
from diffscale.sampling.guidance import Denoiser, guided
from diffscale.utils.dist import all_gather_rows, broadcast_object, get_rank

SIGMAS = (0.005, 0.02, 0.1, 0.5, 2.0)


def exact_denoiser(mixture: GaussianMixture2D) -> Denoiser:
    """E[x | x + sigma n, class] from the mixture: the best possible denoiser (for tests and references)."""
    per_class = {int(c): mixture.select(int(c)) for c in mixture.classes.unique()}

    def denoise(x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        out = torch.empty_like(x)
        for c, part in per_class.items():  # one vectorised call per class, not per example
            mask = labels == c
            out[mask] = part.denoise(x[mask], float(sigma[0]))
        return out

    return denoise


def noisy_set(mixture: GaussianMixture2D, num_samples: int,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean points x [N, 2], their classes [N], outer-branch flags [N] and unit noise [N, 2] from `gen`."""
    x, comp = mixture.sample_components(num_samples, gen)
    labels, outer = mixture.classes[comp], mixture.tags[comp] >= TREE_DEPTH - 2
    return x, labels, outer, torch.randn(x.shape, generator=gen)


@torch.no_grad()
def denoiser_metrics(D: Denoiser, mixture: GaussianMixture2D, x: torch.Tensor, labels: torch.Tensor,
                     outer: torch.Tensor, noise: torch.Tensor, sigmas: tuple[float, ...] = SIGMAS,
                     sigma_data: float = 0.5) -> dict[str, float]:
    """`loss_sigma_<s>`, `denoise_l2_sigma_<s>` and `outer_loss` of denoiser D on the points of `noisy_set`."""
    exact = exact_denoiser(mixture)
    out, outer_losses = {}, []
    for s in sigmas:
        sig = torch.full((x.shape[0],), s)
        noisy = x + s * noise
        d = D(noisy, sig, labels).float()
        weighted = (s**2 + sigma_data**2) / (s * sigma_data) ** 2 * ((d - x) ** 2).sum(1)
        out[f"loss_sigma_{s:g}"] = weighted.mean().item()
        out[f"denoise_l2_sigma_{s:g}"] = (d - exact(noisy, sig, labels)).norm(dim=1).mean().item()
        outer_losses.append(weighted[outer].mean().item())
    out["outer_loss"] = sum(outer_losses) / len(outer_losses)
    return out


def sample_metrics(samples: torch.Tensor, labels: torch.Tensor, mixture: GaussianMixture2D, grid: int = 128,
                   in_support: torch.Tensor | None = None) -> dict[str, float]:
    """`support_share` and `class_accuracy` of generated samples [N, 2] conditioned on `labels` [N]."""
    scores = torch.stack([mixture.select(c).log_prob(samples) + mixture.weights[mixture.classes == c].sum().log()
                          for c in range(int(mixture.classes.max()) + 1)], dim=1)
    return {"support_share": support_share(samples, mixture, grid, in_support=in_support),
            "class_accuracy": (scores.argmax(1) == labels).float().mean().item()}


@torch.no_grad()
def toy_metrics(net: Denoiser, mixture: GaussianMixture2D, guide: Denoiser | None = None, weight: float = 1.0,
                num_samples: int = 4096, sigmas: tuple[float, ...] = SIGMAS, sampler: EDMHeunSampler | None = None,
                grid: int = 128, seed: int = 0, sigma_data: float = 0.5,
                with_denoiser: bool = True) -> dict[str, float]:
    """The sample metrics of `sampler` (default EDM Heun, 32 steps) and, `with_denoiser`, the denoiser metrics
    (for networks that are EDM denoisers D(x; sigma); a DDPM network takes timesteps, not sigma)."""
    gen = torch.Generator().manual_seed(seed)
    D = guided(net, guide, weight)
    x, labels, outer, noise = noisy_set(mixture, num_samples, gen)
    out = denoiser_metrics(D, mixture, x, labels, outer, noise, sigmas, sigma_data) if with_denoiser else {}
    sampler = sampler or EDMHeunSampler(num_steps=32, sigma_max=5.0)
    samples = sampler(D, torch.randn(num_samples, 2, generator=gen), labels)  # D is already guided at `weight`
    return out | sample_metrics(samples, labels, mixture, grid)


def support_mask(mixture: GaussianMixture2D, grid: int = 128, mass_quantile: float = 0.01) -> torch.Tensor:
    """Bool [grid * grid]: cells whose centre has a log-density above the `mass_quantile` quantile of the
    log-density of true samples (seconds to compute: evaluators that score repeatedly keep it)."""
    x0, x1, y0, y1 = EXTENT
    xs = torch.linspace(x0, x1, grid + 1)[:-1] + (x1 - x0) / (2 * grid)
    ys = torch.linspace(y0, y1, grid + 1)[:-1] + (y1 - y0) / (2 * grid)
    centres = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    true, _ = mixture.sample(4096, torch.Generator().manual_seed(12345))
    threshold = mixture.log_prob(true, dtype=torch.float32).quantile(mass_quantile)
    return mixture.log_prob(centres, dtype=torch.float32) >= threshold


def support_share(samples: torch.Tensor, mixture: GaussianMixture2D, grid: int = 128,
                  mass_quantile: float = 0.01, in_support: torch.Tensor | None = None) -> float:
    """Distinct support cells hit / min(samples, support cells); the support is `support_mask` (or
    `in_support`, the same mask computed before)."""
    x0, x1, y0, y1 = EXTENT
    if in_support is None:
        in_support = support_mask(mixture, grid, mass_quantile)
    ix = ((samples[:, 0] - x0) / (x1 - x0) * grid).floor().long()
    iy = ((samples[:, 1] - y0) / (y1 - y0) * grid).floor().long()
    inside = (ix >= 0) & (ix < grid) & (iy >= 0) & (iy < grid)
    cells = (ix * grid + iy)[inside].unique()
    hit = in_support[cells].sum().item()
    return hit / min(len(samples), int(in_support.sum().item()))


@EVALUATORS.register_module()
class ToyMetrics(Evaluator):
    """The toy metrics through the evaluator interface (tools/test.py, EvalHook): `support_share` and
    `class_accuracy` of the generated samples (gathered from every rank), and, given the denoiser at `begin`,
    its losses on `num_samples` noisy points drawn with `seed` (`with_denoiser=False` skips those: DDPM networks
    take timesteps, not sigma). Rank 0 computes them and broadcasts."""

    name = "toy"
    input = "samples"
    needs_labels = True

    def __init__(self, num_samples: int = 4096, sigmas: tuple[float, ...] = SIGMAS, grid: int = 128, seed: int = 0,
                 sigma_data: float = 0.5, tree_seed: int = 2, with_denoiser: bool = True,
                 device: str | torch.device = "cpu"):
        super().__init__(device)
        self.with_denoiser = with_denoiser
        self.num_samples, self.sigmas, self.grid, self.seed = num_samples, tuple(sigmas), grid, seed
        self.sigma_data, self.tree_seed = sigma_data, tree_seed
        self.mixture: GaussianMixture2D | None = None  # built at the first begin()
        self.in_support: torch.Tensor | None = None  # support_mask, computed at the first compute()

    def begin(self, denoiser: Denoiser | None = None) -> None:
        if self.mixture is None:
            self.mixture = tree_mixture(self.tree_seed)
        self.samples: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.denoiser_values = {}
        if denoiser is not None and self.with_denoiser and get_rank() == 0:  # rank 0 reports for all (compute)
            gen = torch.Generator().manual_seed(self.seed)
            x, labels, outer, noise = noisy_set(self.mixture, self.num_samples, gen)

            def on_device(x: torch.Tensor, sigma: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
                return denoiser(x.to(self.device), sigma.to(self.device), c.to(self.device)).cpu()

            self.denoiser_values = denoiser_metrics(on_device, self.mixture, x, labels, outer, noise, self.sigmas,
                                                    self.sigma_data)

    def update(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        if labels is None:
            raise ValueError("ToyMetrics needs the class labels the samples were conditioned on")
        self.samples.append(x.float().reshape(-1, 2).to(self.device))
        self.labels.append(labels.to(self.device))

    def compute(self, ref: dict | None = None) -> dict[str, float]:
        samples = all_gather_rows(torch.cat(self.samples) if self.samples else torch.zeros(0, 2, device=self.device))
        labels = all_gather_rows(torch.cat(self.labels) if self.labels else
                                 torch.zeros(0, dtype=torch.int64, device=self.device))
        if get_rank() != 0:  # every rank has every sample; one computes, the others receive
            return broadcast_object(None)
        if self.in_support is None:
            self.in_support = support_mask(self.mixture, self.grid)
        values = sample_metrics(samples.cpu(), labels.cpu(), self.mixture, self.grid, self.in_support)
        return broadcast_object(self.denoiser_values | values)
