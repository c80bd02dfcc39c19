"""FD-DINOv2 (Stein et al. 2023, "Exposing flaws of generative model evaluation metrics"): the Frechet distance
of fid.py on DINOv2 ViT-L/14 CLS features (1024-d), images resized to 224 px."""

import torch

from diffscale.evaluation.fid import GaussianFeatureEvaluator
from diffscale.evaluation.networks import DINOv2Features
from diffscale.registry import EVALUATORS


@EVALUATORS.register_module()
class FDDINOv2(GaussianFeatureEvaluator):
    """`weights`: timm's `vit_large_patch14_dinov2.lvd142m` (model.safetensors) or the original
    dinov2_vitl14_pretrain.pth; the 518-px position embedding is resampled to 224 px as the reference code does.
    `arch` may name a smaller timm DINOv2 for tests (marked not comparable)."""

    name = "fd_dinov2"
    needs_reference = True
    DEFAULT_ARCH = "vit_large_patch14_dinov2"
    DEFAULT_WEIGHTS = "weights/evaluation/vit_large_patch14_dinov2.lvd142m.safetensors"
    SOURCE = ("https://huggingface.co/timm/vit_large_patch14_dinov2.lvd142m (model.safetensors; timm hub name "
              "'vit_large_patch14_dinov2.lvd142m')")
    # No digest could be established offline: Meta's dinov2_vitl14_pretrain.pth (torch hub) carries no hash in its
    # name and torch hub loads it unchecked; the Hugging Face file's SHA-256 is shown only on its web page. So no
    # file is marked comparable; the table prints the file's digest to compare with that page by hand.
    OFFICIAL_SHA256 = ()

    def build_network(self) -> torch.nn.Module:
        return DINOv2Features(self.arch, self.weights)

    def feature_dim(self) -> int:
        return self.network.net.num_features  # 1024 for ViT-L; smaller test architectures differ
