"""A 2D Gaussian mixture with exact sampling, density and noisy-denoiser, all vectorised over points."""

import math

import torch


class GaussianMixture2D:
    """Components: weights[K] (unnormalised), means[K, 2], covs[K, 2, 2], classes[K] (int), and an optional
    integer tag per component (the tree stores each branch's depth there)."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor, classes: torch.Tensor,
                 tags: torch.Tensor | None = None):
        self.weights = weights.double() / weights.sum()
        self.means, self.covs, self.classes = means.double(), covs.double(), classes.long()
        self.tags = torch.zeros_like(self.classes) if tags is None else tags.long()
        self.chol = torch.linalg.cholesky(self.covs)

    def select(self, cls: int) -> "GaussianMixture2D":
        keep = self.classes == cls
        return GaussianMixture2D(self.weights[keep], self.means[keep], self.covs[keep], self.classes[keep],
                                 self.tags[keep])

    def sample_components(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n points [n, 2] (float32) and the index of the component each was drawn from [n]."""
        comp = torch.multinomial(self.weights.float(), n, replacement=True, generator=generator)
        eps = torch.randn(n, 2, 1, dtype=torch.float64, generator=generator)
        x = self.means[comp] + (self.chol[comp] @ eps).squeeze(-1)
        return x.float(), comp

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n points [n, 2] (float32) and their class labels [n]."""
        x, comp = self.sample_components(n, generator)
        return x, self.classes[comp]

    def _log_components(self, x: torch.Tensor, sigma: float, dtype: torch.dtype = torch.float64
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """log(w_k N(x; mu_k, Sigma_k + sigma^2 I)) [n, K] and the offsets x - mu_k [n, K, 2].

        Written out for 2x2 covariances (closed-form inverse) so it is elementwise work, not batched
        matrix products: about 20x faster than an einsum over [n, K, 2, 2] on CPU."""
        a = self.covs[:, 0, 0] + sigma**2
        b = self.covs[:, 0, 1]
        c = self.covs[:, 1, 1] + sigma**2
        det = a * c - b * b
        const = (-0.5 * det.log() - math.log(2 * math.pi) + self.weights.log()).to(dtype)
        a, b, c = ((v / det).to(dtype) for v in (a, b, c))
        d = x.to(dtype)[:, None, :] - self.means.to(dtype)[None]  # [n, K, 2]
        dx, dy = d[..., 0], d[..., 1]
        maha = c * dx * dx - 2 * b * dx * dy + a * dy * dy
        return const - 0.5 * maha, d

    def log_prob(self, x: torch.Tensor, sigma: float = 0.0, chunk: int = 8192,
                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """log p(x) of the mixture convolved with N(0, sigma^2 I); x [N, 2] -> [N] in `dtype`."""
        return torch.cat([torch.logsumexp(self._log_components(xs, sigma, dtype)[0], dim=1)
                          for xs in x.split(chunk)])

    def denoise(self, x: torch.Tensor, sigma: float, chunk: int = 8192) -> torch.Tensor:
        """The exact denoiser E[y | y + sigma n = x] of the mixture; x [N, 2] -> [N, 2] (float32)."""
        out = []
        # Per component E[y | x] = x - sigma^2 (Sigma + sigma^2 I)^-1 (x - mu); mixed by responsibility.
        a = self.covs[:, 0, 0] + sigma**2
        b = self.covs[:, 0, 1]
        c = self.covs[:, 1, 1] + sigma**2
        det = a * c - b * b
        for xs in x.split(chunk):
            logits, d = self._log_components(xs, sigma)
            resp = torch.softmax(logits, dim=1)
            px = (c * d[..., 0] - b * d[..., 1]) / det  # (Sigma + sigma^2 I)^-1 d, component-wise
            py = (-b * d[..., 0] + a * d[..., 1]) / det
            shift = torch.stack([(resp * px).sum(1), (resp * py).sum(1)], dim=1)
            out.append((xs.double() - sigma**2 * shift).float())
        return torch.cat(out)
