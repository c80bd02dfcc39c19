"""Frechet Inception Distance (Heusel et al. 2017) with the Inception-v3 of the standard (TF port, pool3, 2048-d),
and the Frechet distance shared with FD-DINOv2.

FD = ||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^{1/2}).
The trace term is computed in float64 without the non-symmetric product: with C1 = V diag(w) V^T and
B = V_r diag(w_r)^{1/2} over the r eigenvalues of C1 that are not round-off, the eigenvalues of the symmetric PSD
r x r matrix B^T C2 B are the nonzero eigenvalues of C1 C2, so tr((C1 C2)^{1/2}) is the sum of their square roots.
Restricting to the range of C1 matters when C1 comes from fewer samples than dimensions (an evaluation of 1k
samples in 2048-d): the D - r null directions would otherwise contribute round-off eigenvalues of ~1e-15 whose
square roots (~3e-8 each) add up to ~1e-4. Same value as scipy's sqrtm of C1 C2 in exact arithmetic.
"""

import numpy as np
import torch

from diffscale.evaluation.base import FeatureEvaluator, GaussianStats, ref_entry
from diffscale.evaluation.networks import build_inception
from diffscale.registry import EVALUATORS
from diffscale.utils.dist import broadcast_object, get_rank


def trace_sqrt_product(cov1: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """tr((C1 C2)^{1/2}) of PSD [D, D] float64 matrices (torch.linalg: its LAPACK is several times faster than
    numpy's for 2048 x 2048)."""
    w, v = torch.linalg.eigh((cov1 + cov1.T) / 2)
    keep = w > w.shape[0] * torch.finfo(w.dtype).eps * w.max().clamp_min(0)  # the rest is round-off
    b = v[:, keep] * w[keep].sqrt()  # [D, r]: C1 = B B^T on its range
    middle = b.T @ cov2 @ b  # [r, r], eigenvalues: those of C1 C2 that are not 0
    return torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance between N(mu1 [D], cov1 [D, D]) and N(mu2, cov2), in float64. Pass the covariance of
    fewer samples (lower rank) first: the computation works on its range."""
    mu1, mu2 = torch.as_tensor(np.asarray(mu1, np.float64)), torch.as_tensor(np.asarray(mu2, np.float64))
    cov1, cov2 = torch.as_tensor(np.asarray(cov1, np.float64)), torch.as_tensor(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"shapes do not match: mu {tuple(mu1.shape)} {tuple(mu2.shape)}, cov {tuple(cov1.shape)} "
                         f"{tuple(cov2.shape)}")
    diff = mu1 - mu2
    return float(diff @ diff + cov1.trace() + cov2.trace() - 2 * trace_sqrt_product(cov1, cov2))


class GaussianFeatureEvaluator(FeatureEvaluator):
    """Frechet distance between Gaussians fitted to the features of the evaluated images and of the
    reference data (`<name>_mu`, `<name>_cov` of a reference file)."""

    def feature_dim(self) -> int:
        raise NotImplementedError

    def begin(self, denoiser=None) -> None:
        self.stats = GaussianStats(self.device)

    def update(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        self.stats.update(self.features(x))

    def reference(self) -> dict[str, np.ndarray]:
        n, mu, cov = self.stats.reduce(self.feature_dim())
        return {"mu": mu, "cov": cov, "num": np.array(n), "network": np.array(self.network_id())}

    def compute(self, ref: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        n, mu, cov = self.stats.reduce(self.feature_dim())
        ref_stats = (int(ref_entry(ref, self, "num")), ref_entry(ref, self, "mu"), ref_entry(ref, self, "cov"))
        pairs = [(n, mu, cov), ref_stats]
        (_, mu1, cov1), (_, mu2, cov2) = sorted(pairs, key=lambda p: p[0])  # fewer samples (lower rank) first
        # Once, on rank 0: two 2048 x 2048 eigendecompositions per rank would compete for the host's cores.
        value = frechet_distance(mu1, cov1, mu2, cov2) if get_rank() == 0 else None
        return {self.name: broadcast_object(value)}


@EVALUATORS.register_module()
class FID(GaussianFeatureEvaluator):
    """FID: torch-fidelity's FeatureExtractorInceptionV3 (the standard's TF Inception, its resize included),
    2048-d pool features. `weights`: torch-fidelity's converted weights file."""

    name = "fid"
    needs_reference = True
    DEFAULT_ARCH = "inception-v3-compat"
    DEFAULT_WEIGHTS = "weights/evaluation/weights-inception-2015-12-05-6726825d.pth"
    SOURCE = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
              "weights-inception-2015-12-05-6726825d.pth")
    # torch-fidelity publishes no full digest (it downloads without torch.hub's check_hash). Its release file's name
    # follows torch.hub's naming rule, "<name>-<first 8+ hex digits of the file's SHA-256>.<ext>" (the rule
    # load_state_dict_from_url(check_hash=True) enforces), so the prefix 6726825d is what can be checked: 32 bits
    # tell the release file from any other one short of a deliberate forgery. The check reads the content, not the
    # name. A third-party project's notes give this file's full digest as
    # 6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2: it agrees with the prefix, but it is not the
    # publisher's word, so only the prefix is checked.
    OFFICIAL_SHA256 = ("6726825d",)

    def feature_dim(self) -> int:
        return 2048

    def build_network(self) -> torch.nn.Module:
        if self.arch != self.DEFAULT_ARCH:
            raise ValueError(f"FID.arch: only '{self.DEFAULT_ARCH}' (the standard's network), got '{self.arch}'")
        return build_inception(self.weights)
