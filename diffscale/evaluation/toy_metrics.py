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
"""

import torch

from diffscale.data.gmm import GaussianMixture2D
from diffscale.data.toy import EXTENT, TREE_DEPTH
from diffscale.sampling.edm_heun import EDMHeunSampler
from diffscale.sampling.guidance import Denoiser, guided

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


@torch.no_grad()
def toy_metrics(net: Denoiser, mixture: GaussianMixture2D, guide: Denoiser | None = None, weight: float = 1.0,
                num_samples: int = 4096, sigmas: tuple[float, ...] = SIGMAS, sampler: EDMHeunSampler | None = None,
                grid: int = 128, seed: int = 0, sigma_data: float = 0.5) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    D = guided(net, guide, weight)
    exact = exact_denoiser(mixture)
    x, comp = mixture.sample_components(num_samples, gen)
    labels, outer = mixture.classes[comp], mixture.tags[comp] >= TREE_DEPTH - 2
    noise = torch.randn(x.shape, generator=gen)
    out, outer_losses = {}, []
    for s in sigmas:
        sig = torch.full((num_samples,), s)
        noisy = x + s * noise
        d = D(noisy, sig, labels).float()
        weighted = (s**2 + sigma_data**2) / (s * sigma_data) ** 2 * ((d - x) ** 2).sum(1)
        out[f"loss_sigma_{s:g}"] = weighted.mean().item()
        out[f"denoise_l2_sigma_{s:g}"] = (d - exact(noisy, sig, labels)).norm(dim=1).mean().item()
        outer_losses.append(weighted[outer].mean().item())
    out["outer_loss"] = sum(outer_losses) / len(outer_losses)

    sampler = sampler or EDMHeunSampler(num_steps=32, sigma_max=5.0)
    samples = sampler(D, torch.randn(num_samples, 2, generator=gen), labels)  # D is already guided at `weight`
    out["support_share"] = support_share(samples, mixture, grid)
    scores = torch.stack([mixture.select(c).log_prob(samples) + mixture.weights[mixture.classes == c].sum().log()
                          for c in range(int(mixture.classes.max()) + 1)], dim=1)
    out["class_accuracy"] = (scores.argmax(1) == labels).float().mean().item()
    return out


def support_share(samples: torch.Tensor, mixture: GaussianMixture2D, grid: int = 128,
                  mass_quantile: float = 0.01) -> float:
    """Distinct support cells hit / min(samples, support cells). The support is the set of cells whose centre
    has a log-density above the `mass_quantile` quantile of the log-density of true samples."""
    x0, x1, y0, y1 = EXTENT
    xs = torch.linspace(x0, x1, grid + 1)[:-1] + (x1 - x0) / (2 * grid)
    ys = torch.linspace(y0, y1, grid + 1)[:-1] + (y1 - y0) / (2 * grid)
    centres = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    true, _ = mixture.sample(4096, torch.Generator().manual_seed(12345))
    threshold = mixture.log_prob(true, dtype=torch.float32).quantile(mass_quantile)
    in_support = mixture.log_prob(centres, dtype=torch.float32) >= threshold  # [grid * grid]
    ix = ((samples[:, 0] - x0) / (x1 - x0) * grid).floor().long()
    iy = ((samples[:, 1] - y0) / (y1 - y0) * grid).floor().long()
    inside = (ix >= 0) & (ix < grid) & (iy >= 0) & (iy < grid)
    cells = (ix * grid + iy)[inside].unique()
    hit = in_support[cells].sum().item()
    return hit / min(len(samples), int(in_support.sum().item()))
