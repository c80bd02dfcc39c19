"""The 2D tree toy of Karras et al. 2024 ("Guiding a diffusion model with a bad version of itself", Sec. 3):
two classes, each a tree of branches that split recursively, every branch a chain of thin Gaussians.

`Tree2DStream` is the training loader: an endless, deterministic stream whose batch k on rank r is drawn
from a generator seeded with (seed, rank, k), so resuming needs only k (no batches are replayed).
"""

import math

import torch

from diffscale.data.gmm import GaussianMixture2D
from diffscale.registry import DATASETS

# Facts of the published toy distribution.
TREE_DEPTH = 7  # levels of branching
COMPONENTS_PER_BRANCH = 8  # Gaussians along one branch
BRANCH_DECAY = 0.8  # each level is 0.8x as long and as thick as its parent
ORIGIN = (0.0030, 0.0325)
SCALE = (1.3136, 1.3844)
EXTENT = (-1.7, 1.7, -1.3, 1.3)  # x0, x1, y0, y1: a box holding both trees, for plots and grid metrics


def tree_mixture(seed: int = 2) -> GaussianMixture2D:
    """Both classes of the tree (class 0 grows towards +x, class 1 towards -x)."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.tensor(SCALE, dtype=torch.float64)
    weights, means, covs, classes, depths = [], [], [], [], []

    def jitter() -> float:  # +-20% randomness of lengths and angles
        return 1 + 0.2 * torch.randn((), generator=gen, dtype=torch.float64).item()

    def grow(cls: int, depth: int, start: torch.Tensor, angle: float) -> None:
        if depth >= TREE_DEPTH:
            return
        direction = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
        length = 0.292 * BRANCH_DECAY**depth * jitter()
        thickness = 0.2 * BRANCH_DECAY**depth / length  # across the branch, relative to its length
        size = scale * length * 0.06
        along = torch.outer(direction, direction)
        cov = (along + (torch.eye(2, dtype=torch.float64) - along) * thickness**2) * torch.outer(size, size)
        for t in torch.linspace(0.07, 0.93, COMPONENTS_PER_BRANCH, dtype=torch.float64):
            weights.append(length * 0.5**depth)  # children share their parent's mass
            means.append((start + direction * length * t) * scale)
            covs.append(cov)
            classes.append(cls)
            depths.append(depth)
        for sign in (1, -1):
            grow(cls, depth + 1, start + direction * length, angle + sign * 0.7**depth * jitter())

    origin = torch.tensor(ORIGIN, dtype=torch.float64)
    grow(0, 0, origin, 0.0)
    grow(1, 0, origin, math.pi)
    return GaussianMixture2D(torch.tensor(weights), torch.stack(means), torch.stack(covs), torch.tensor(classes),
                             tags=torch.tensor(depths))


@DATASETS.register_module()
class Tree2DStream:
    """Endless batches {'x': [batch_gpu, 2], 'label': [batch_gpu]} from the tree mixture.

    The trainer passes batch_gpu, rank, seed and device. `batch_gpu` may be changed between batches
    (the curation hook asks for super-batches)."""

    def __init__(self, batch_gpu: int, rank: int = 0, seed: int = 0, device: str | torch.device = "cpu",
                 tree_seed: int = 2):
        self.batch_gpu, self.rank, self.seed, self.device = batch_gpu, rank, seed, torch.device(device)
        self.mixture = tree_mixture(tree_seed)
        self.batch_index = 0

    def __iter__(self) -> "Tree2DStream":
        return self

    def __next__(self) -> dict:
        # One generator per batch: batch k depends on (seed, rank, k) only.
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 7919 + self.batch_index)
        x, label = self.mixture.sample(self.batch_gpu, gen)
        self.batch_index += 1
        return {"x": x.to(self.device), "label": label.to(self.device)}

    def state_dict(self) -> dict:
        return {"batch_index": self.batch_index}

    def load_state_dict(self, state: dict) -> None:
        self.batch_index = int(state["batch_index"])
