"""Classifier accuracy of class-conditional samples: a pre-trained classifier's top-1 / top-5 against the labels the
samples were conditioned on (the AJEST work uses the Tiny ImageNet Swin-L of Huynh 2022, "Vision Transformers in
2022: An Update on Tiny ImageNet", 91.35% top-1 on real validation images)."""

import numpy as np
import torch

from diffscale.evaluation.base import FeatureEvaluator
from diffscale.evaluation.networks import ClassifierLogits
from diffscale.registry import EVALUATORS
from diffscale.utils.dist import all_reduce_sum


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Count of examples whose label is among the k highest logits, for each k: logits [B, C], labels [B] ->
    int64 [len(ks)]. Ties rank the lower class index first (a stable sort; torch.topk leaves their order
    unspecified), so a constant output is credited with classes 0..k-1 only, the same on every device."""
    k_max = min(max(ks), logits.shape[1])
    top = logits.argsort(dim=1, descending=True, stable=True)[:, :k_max]  # [B, k_max], best first
    hit = top == labels.reshape(-1, 1).to(top.device)  # [B, k_max], at most one True per row
    return torch.stack([hit[:, : min(k, k_max)].any(dim=1).sum() for k in ks])


@EVALUATORS.register_module()
class ClassifierAccuracy(FeatureEvaluator):
    """Reports `top1_acc` and `top5_acc` (fractions in [0, 1]) of a timm classifier at `size_px`.

    `weights`: Huynh's Tiny ImageNet Swin-L checkpoint (a torch file with 'model_state_dict'; timm's Swin
    checkpoint filter converts its 2022 key layout). `arch`/`num_classes`/`size_px` select another classifier
    (e.g. a small one for tests, marked not comparable)."""

    name = "classifier"
    needs_labels = True
    DEFAULT_ARCH = "swin_large_patch4_window12_384"
    DEFAULT_WEIGHTS = "weights/evaluation/tiny_imagenet_swin_l.pth"
    SOURCE = ("https://drive.google.com/file/d/15YpRF0lFWAfoIto4FaQ0a-Y5pqusp3Zi/view (Swin-L of "
              "github.com/ehuynh1106/TinyImageNet-Transformers; timm architecture 'swin_large_patch4_window12_384', "
              "initialised from timm hub 'swin_large_patch4_window12_384.ms_in22k_ft_in1k')")
    # The checkpoint is shared on Google Drive with no published digest: none is recorded, no file is marked
    # comparable, and the table prints the file's digest so that runs can at least be matched to one file.
    OFFICIAL_SHA256 = ()

    def __init__(self, weights: str | None = None, random_weights: bool = False, arch: str | None = None,
                 num_classes: int = 200, size_px: int = 384, topk: tuple[int, ...] = (1, 5), precision: str = "fp32",
                 device: str | torch.device = "cpu"):
        super().__init__(weights, random_weights, arch, precision, device)
        self.num_classes, self.size_px, self.topk = num_classes, size_px, tuple(topk)

    def build_network(self) -> torch.nn.Module:
        return ClassifierLogits(self.arch, self.weights, self.num_classes, self.size_px)

    def begin(self, denoiser=None) -> None:
        self.correct = torch.zeros(len(self.topk), dtype=torch.int64, device=self.device)
        self.n = 0

    def update(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        if labels is None:
            raise ValueError("ClassifierAccuracy needs the class labels the samples were conditioned on")
        self.correct += topk_correct(self.features(x), labels.to(self.device), self.topk)
        self.n += x.shape[0]

    def counts(self) -> tuple[int, torch.Tensor]:
        """(samples, correct per k) over every rank. Collective."""
        n = all_reduce_sum(torch.tensor([self.n], dtype=torch.int64, device=self.device))
        return int(n.item()), all_reduce_sum(self.correct.clone())

    def compute(self, ref: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        n, correct = self.counts()
        return {f"top{k}_acc": c / max(n, 1) for k, c in zip(self.topk, correct.tolist(), strict=True)}

    def reference(self) -> dict[str, np.ndarray]:
        """On real labelled data: the classifier's own accuracy (a sanity check of weights and preprocessing)."""
        n, correct = self.counts()
        return {"num": np.array(n), "network": np.array(self.network_id()),
                **{f"top{k}_acc": np.array(c / max(n, 1)) for k, c in zip(self.topk, correct.tolist(), strict=True)}}
