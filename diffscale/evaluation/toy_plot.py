"""PNG plot of 2D samples over the ground-truth density of the tree toy."""

from pathlib import Path

import numpy as np
import torch

from diffscale.data.gmm import GaussianMixture2D
from diffscale.data.toy import EXTENT

CLASS_COLORS = ("tab:orange", "tab:blue")


def plot_samples(mixture: GaussianMixture2D, samples: torch.Tensor, labels: torch.Tensor, path: Path,
                 title: str = "", extent: tuple[float, float, float, float] = EXTENT,
                 resolution: int = 240) -> np.ndarray:
    """Scatter `samples` [N, 2] coloured by class over log p(x); writes `path`, returns the RGB image."""
    xs = torch.linspace(extent[0], extent[1], resolution)
    ys = torch.linspace(extent[2], extent[3], int(resolution * (extent[3] - extent[2]) / (extent[1] - extent[0])))
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)
    logp = mixture.log_prob(grid, dtype=torch.float32).reshape(len(ys), len(xs)).numpy()
    import matplotlib  # 0.7 s to import: only when a plot is drawn

    matplotlib.use("Agg")  # headless: no display on training nodes
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    ax.imshow(np.clip(logp, logp.max() - 12, None), extent=extent, origin="lower", cmap="Greys", alpha=0.8)
    for cls, color in enumerate(CLASS_COLORS):
        pts = samples[labels == cls].cpu().numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=2, c=color, alpha=0.6, linewidths=0, label=f"class {cls}")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper right", markerscale=6)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return image
