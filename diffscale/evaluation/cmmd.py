"""CMMD (Jayasumana et al. 2024, "Rethinking FID"): the maximum mean discrepancy between CLIP ViT-L/14@336 image
embeddings of generated and reference images, with a Gaussian RBF kernel k(a, b) = exp(-||a - b||^2 / (2 sigma^2)),
sigma = 10, scaled by 1000.

As in the paper's official implementation, the minimum-variance (biased, V-statistic) estimator: each of the three
kernel means runs over every pair, the diagonal i = j included:
MMD^2 = mean_ij k(x_i, x_j) + mean_ij k(y_i, y_j) - 2 mean_ij k(x_i, y_j).
Kernel sums are taken in float64, in row blocks (50k x 50k never materialises), split over ranks.
"""

import numpy as np
import torch

from diffscale.evaluation.base import FeatureEvaluator, ref_entry
from diffscale.evaluation.networks import CLIPImageEmbedding
from diffscale.registry import EVALUATORS
from diffscale.utils.dist import all_gather_rows, all_reduce_sum, get_rank, get_world_size

SIGMA, SCALE = 10.0, 1000.0


def rbf_kernel_sum(a: torch.Tensor, b: torch.Tensor, sigma: float, block_rows: int = 2048) -> torch.Tensor:
    """sum_ij exp(-||a_i - b_j||^2 / (2 sigma^2)) for a [n, D], b [m, D], as a float64 scalar tensor."""
    a, b = a.to(torch.float64), b.to(b.device, torch.float64)
    gamma = 1.0 / (2.0 * sigma**2)
    b_sq = (b * b).sum(1)
    total = torch.zeros((), dtype=torch.float64, device=b.device)
    for start in range(0, a.shape[0], block_rows):
        rows = a[start:start + block_rows].to(b.device)
        d2 = (rows * rows).sum(1, keepdim=True) + b_sq - 2 * rows @ b.T  # [rows, m]
        total += torch.exp(-gamma * d2.clamp_min(0)).sum()
    return total


def mmd(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, sigma: float = SIGMA,
        scale: float = SCALE) -> float:
    """Biased MMD^2 estimate between samples x [n, D] and y [m, D] (CMMD's definition), times `scale`."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    n, m = x.shape[0], y.shape[0]
    k_xx = rbf_kernel_sum(x, x, sigma) / (n * n)
    k_yy = rbf_kernel_sum(y, y, sigma) / (m * m)
    k_xy = rbf_kernel_sum(x, y, sigma) / (n * m)
    return float(scale * (k_xx + k_yy - 2 * k_xy))


def distributed_mmd(x: torch.Tensor, y: torch.Tensor, sigma: float = SIGMA, scale: float = SCALE) -> float:
    """mmd(x, y) with x [n, D] and y [m, D] present on every rank; each rank sums its share of the rows and one
    all-reduce adds them up. Collective."""
    rank, world = get_rank(), get_world_size()
    n, m = x.shape[0], y.shape[0]
    xs, ys = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
    sums = torch.stack([rbf_kernel_sum(xs, x, sigma), rbf_kernel_sum(ys, y, sigma), rbf_kernel_sum(xs, y, sigma)])
    k_xx, k_yy, k_xy = (all_reduce_sum(sums) / torch.tensor([n * n, m * m, n * m], device=sums.device)).tolist()
    return scale * (k_xx + k_yy - 2 * k_xy)


@EVALUATORS.register_module()
class CMMD(FeatureEvaluator):
    """Reports `cmmd` against the reference embeddings `cmmd_embeddings` [m, D] of a reference file.

    `weights`: the OpenAI CLIP ViT-L/14@336, in open_clip's format (open_clip 'ViT-L-14-336', pretrained
    'openai') or as OpenAI's TorchScript release file. `arch` may name a smaller open_clip model for tests (marked
    not comparable)."""

    name = "cmmd"
    needs_reference = True
    DEFAULT_ARCH = "ViT-L-14-336"
    DEFAULT_WEIGHTS = "weights/evaluation/vit_large_patch14_clip_336.openai.bin"
    OPENAI_URL = ("https://openaipublic.azureedge.net/clip/models/"
                  "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt")
    SOURCE = ("https://huggingface.co/timm/vit_large_patch14_clip_336.openai (open_clip_pytorch_model.bin; "
              f"open_clip model 'ViT-L-14-336', pretrained 'openai'), or OpenAI's own file {OPENAI_URL}, the one "
              "whose SHA-256 is published and checked (the only file the metrics table marks comparable)")
    # OpenAI's release file ViT-L-14-336px.pt: its URL's path segment is the file's full SHA-256, which the official
    # CLIP code (clip.py's _MODELS) checks after download, as do open_clip (pretrained.py, 'ViT-L-14-336' /
    # 'openai') and torch-fidelity (feature_extractor_clip.py, 'clip-vit-l-14-336px', check_hash=True), which list
    # the same URL / digest. The timm-hub conversion (open_clip_pytorch_model.bin) has no digest that could be read
    # offline: it loads, and the table reports it by name and digest.
    OFFICIAL_SHA256 = (OPENAI_URL.split("/")[-2],)

    def __init__(self, weights: str | None = None, random_weights: bool = False, arch: str | None = None,
                 sigma: float = SIGMA, scale: float = SCALE, precision: str = "fp32",
                 device: str | torch.device = "cpu"):
        super().__init__(weights, random_weights, arch, precision, device)
        self.sigma, self.scale = sigma, scale

    def build_network(self) -> torch.nn.Module:
        return CLIPImageEmbedding(self.arch, self.weights)

    def begin(self, denoiser=None) -> None:
        self.parts: list[torch.Tensor] = []

    def update(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        self.parts.append(self.features(x))  # [B, 768] float32: 150 MB for 50k, images are not kept

    def embeddings(self) -> torch.Tensor:
        """Every rank's embeddings [N, D], in rank order. Collective."""
        local = torch.cat(self.parts) if self.parts else torch.zeros(0, self.network.output_dim, device=self.device)
        return all_gather_rows(local)

    def compute(self, ref: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        y = torch.as_tensor(np.asarray(ref_entry(ref, self, "embeddings")), device=self.device)
        return {self.name: distributed_mmd(self.embeddings(), y, self.sigma, self.scale)}

    def reference(self) -> dict[str, np.ndarray]:
        x = self.embeddings()
        return {"embeddings": x.cpu().numpy(), "num": np.array(x.shape[0]), "network": np.array(self.network_id())}
