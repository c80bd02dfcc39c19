"""The evaluator contract (registry EVALUATORS) and the collective helpers the evaluators share.

An evaluation is: `begin(denoiser)`, then `update(x, labels)` for every batch this rank produced (features are
accumulated, images are dropped at once: 50k samples never sit in memory as images), then `compute(ref)`,
collective: every rank calls it and gets the same numbers. `reference()` (collective) returns the statistics
of what was seen, for tools/compute_ref_stats.py. Inputs:
- `input == 'images'`: uint8 [B, 3, H, W] on the evaluator's device;
- `input == 'samples'`: the sampler's raw output [B, ...] (the toy's 2D points).
`labels` are int64 [B] (the classes samples were conditioned on) or None.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffscale.errors import ConfigError
from diffscale.evaluation.networks import check_weights, sha256_file
from diffscale.sampling.guidance import Denoiser
from diffscale.utils.dist import all_reduce_sum


class Evaluator:
    name = "evaluator"  # key of its reference statistics and prefix of what it reports
    input = "images"  # 'images' (uint8 [B, 3, H, W]) or 'samples' (raw sampler output)
    needs_labels = False  # update() needs the class labels
    needs_reference = False  # compute() needs reference statistics (tools/compute_ref_stats.py)
    comparable = True  # False: untrained or substituted network; the numbers only mean something in tests

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)

    def provenance(self) -> str:
        """The table's 'comparable' entry: 'yes' or 'NO' (feature evaluators add why, and which weight file)."""
        return "yes" if self.comparable else "NO"

    def begin(self, denoiser: Denoiser | None = None) -> None:
        """Start an evaluation: reset the accumulators; `denoiser` is the (guided) model, for evaluators that
        also probe it directly (ToyMetrics)."""

    def update(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        raise NotImplementedError

    def compute(self, ref: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        raise NotImplementedError

    def reference(self) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"{type(self).__name__} has no reference statistics")

    def network_id(self) -> str:
        """What produced the features; reference statistics are only comparable under the same id."""
        return type(self).__name__


class FeatureEvaluator(Evaluator):
    """An evaluator around a frozen feature network read from `weights` (checked when constructed, so a
    missing file fails at start-up) and built on first use (construction stays cheap).

    `random_weights=True` builds the architecture untrained instead (tests only; marked not comparable).
    `precision='bf16'` runs the network under autocast on CUDA (faster; not the standard's fp32 numbers).

    Comparable with published numbers only with the default architecture in fp32 and a weight file whose SHA-256
    starts with one of OFFICIAL_SHA256: a full digest, or the prefix a release's file name carries where no full
    digest is published (each subclass says where its entries come from). A file that loads strictly but is not
    the official one (a fine-tune, another conversion, a test's random weights saved to disk) is reported by name
    and digest instead.
    """

    DEFAULT_ARCH = ""
    DEFAULT_WEIGHTS = ""  # where the README tells users to put the file
    SOURCE = ""  # where to download the weights
    OFFICIAL_SHA256: tuple[str, ...] = ()  # lowercase hex SHA-256 digests or digest prefixes; empty: none known

    def __init__(self, weights: str | None = None, random_weights: bool = False, arch: str | None = None,
                 precision: str = "fp32", device: str | torch.device = "cpu"):
        super().__init__(device)
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"{type(self).__name__}.precision: expected 'fp32' or 'bf16', got '{precision}'")
        self.arch, self.precision, self.random_weights = arch or self.DEFAULT_ARCH, precision, random_weights
        self.weights = None if random_weights else check_weights(weights or self.DEFAULT_WEIGHTS, self.SOURCE,
                                                                 type(self).__name__)
        self._net: nn.Module | None = None

    def build_network(self) -> nn.Module:
        raise NotImplementedError

    def weights_file(self) -> str:
        """'name sha256:<first 12 hex digits>' of the weight file, 'random' without one."""
        return "random" if self.weights is None else f"{self.weights.name} sha256:{sha256_file(self.weights)[:12]}"

    def not_comparable_because(self) -> list[str]:
        """Why the numbers do not compare with published ones; empty when they do. Hashes the weight file the first
        time (once per process and file version: networks.sha256_file)."""
        if self.weights is None:
            return ["random network (tests only)"]
        reasons = []
        if self.arch != self.DEFAULT_ARCH:
            reasons.append(f"architecture {self.arch}, not {self.DEFAULT_ARCH}")
        if self.precision != "fp32":
            reasons.append(f"{self.precision} autocast, not fp32")
        digest = sha256_file(self.weights)
        if not self.OFFICIAL_SHA256:
            reasons.append("no official digest is recorded to check this file against")
        elif not any(digest.startswith(official) for official in self.OFFICIAL_SHA256):
            reasons.append("not the official weights (SHA-256 differs)")
        return reasons

    @property
    def comparable(self) -> bool:
        return not self.not_comparable_because()

    def provenance(self) -> str:
        reasons = self.not_comparable_because()
        if self.weights is None:
            return f"NO: {reasons[0]}"
        return f"NO: {'; '.join(reasons)} ({self.weights_file()})" if reasons else f"yes ({self.weights_file()})"

    @property
    def network(self) -> nn.Module:
        if self._net is None:
            self._net = self.build_network().to(self.device)
        return self._net

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float32 [B, D]."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{type(self).__name__}: expected uint8 images [B, 3, H, W], got {images.dtype} "
                             f"{tuple(images.shape)}")
        images = images.to(self.device)
        if self.precision == "bf16" and self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.network(images).float()
        return self.network(images).float()

    def network_id(self) -> str:
        source = "random" if self.weights is None else Path(self.weights).name
        return f"{type(self).__name__}:{self.arch}:{source}"


class GaussianStats:
    """Running sums for a mean and covariance of features [B, D], in float64 (summing 50k outer products in
    float32 loses digits the Frechet distance needs). Reduced across ranks by `all_reduce`."""

    def __init__(self, device: torch.device):
        self.device, self.n, self.sum, self.outer = device, 0, None, None

    def update(self, feats: torch.Tensor) -> None:
        f = feats.to(self.device, torch.float64)
        if self.sum is None:
            self.sum = torch.zeros(f.shape[1], dtype=torch.float64, device=self.device)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=self.device)
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def reduce(self, dim: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(n, mean [D], unbiased covariance [D, D]) over every rank. Collective."""
        if self.sum is None:  # a rank without samples still takes part in the reduction
            self.sum = torch.zeros(dim, dtype=torch.float64, device=self.device)
            self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=self.device)
        n = int(all_reduce_sum(torch.tensor([float(self.n)], dtype=torch.float64, device=self.device)).item())
        if n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {n}")
        total, outer = all_reduce_sum(self.sum.clone()), all_reduce_sum(self.outer.clone())
        mu = total / n
        cov = (outer - n * torch.outer(mu, mu)) / (n - 1)
        return n, mu.cpu().numpy(), cov.cpu().numpy()


def ref_entry(ref: dict[str, np.ndarray] | None, evaluator: Evaluator, key: str) -> np.ndarray:
    """`<name>_<key>` of reference statistics, checked to come from the same network as `evaluator`."""
    name = evaluator.name
    if ref is None or f"{name}_{key}" not in ref:
        have = sorted(k.removesuffix("_network") for k in ref if k.endswith("_network")) if ref else []
        raise ConfigError(f"{type(evaluator).__name__} needs reference statistics '{name}_{key}' (compute them with "
                          f"tools/compute_ref_stats.py --evaluators ...); the reference file has: {have or 'none'}")
    made_by = str(ref.get(f"{name}_network", ""))
    if made_by != evaluator.network_id():
        raise ConfigError(f"reference statistics of {name} were computed with {made_by or 'an unknown network'}, "
                          f"this evaluation uses {evaluator.network_id()}")
    return ref[f"{name}_{key}"]
