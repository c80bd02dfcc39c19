"""The feature networks of the evaluators, built from local weight files (never downloaded at run time).

Each builder returns a frozen module in eval mode on the CPU, mapping uint8 images [B, 3, H, W] (any H, W) to
features [B, D] float32, with the resizing and normalisation of the metric's reference implementation inside.
`weights=None` builds the same architecture untrained, from a fixed seed, so that the reference statistics
and the evaluated images of a test see the same random network.
Heavy libraries (torch-fidelity, timm, open_clip) are imported only when a network is built.
"""

import io
import logging
import math
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from diffscale.errors import ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
RANDOM_SEED = 0  # seed of every untrained network: a test's reference and evaluation share one network


def check_weights(path: str | Path | None, source: str, key: str) -> Path:
    """The weight file `path`; ConfigError naming the path and where to download it if it is missing."""
    if path is None or not Path(path).is_file():
        raise ConfigError(f"{key}.weights: no such file '{path}'. Download it from {source} (README, Evaluation); "
                          f"random_weights=True builds the network untrained, for tests only")
    return Path(path)


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (weights_only: no code runs), unwrapped from the training
    checkpoints that nest it ('model_state_dict', 'state_dict', 'model'), without DataParallel's 'module.'."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickles of arbitrary objects are refused by weights_only, on purpose
            raise ConfigError(f"{path}: not a plain state dict ({type(exc).__name__}: {str(exc)[:200]})") from None
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:400]
        raise ConfigError(f"{path}: does not match the network: {detail}") from None


def _seeded(build):
    """Build under a fixed CPU seed without disturbing the caller's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return build()


def _freeze(model: nn.Module) -> nn.Module:
    model.requires_grad_(False)
    return model.eval()


def _normalize(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> standardised per channel."""
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).reshape(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).reshape(1, 3, 1, 1)
    return (x - mean_t) / std_t


# ---------------------------------------------------------------------------------------------- Inception-v3
def build_inception(weights: Path | None) -> nn.Module:
    """torch-fidelity's bit-exact port of the TF Inception-v3 of the FID standard: uint8 -> pool3 [B, 2048]
    (it resizes to 299 with TF1's bilinear rule and scales to [-1, 1] itself)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Untrained(FeatureExtractorInceptionV3):
        # The constructor loads its weights from a path (or downloads them when the path is None). We hand it a
        # serialised None, keep the initial weights, and load the file ourselves with weights_only=True.
        def load_state_dict(self, state_dict, *args, **kwargs):
            return None if state_dict is None else super().load_state_dict(state_dict, *args, **kwargs)

    empty = io.BytesIO()
    torch.save(None, empty)
    empty.seek(0)
    net = _seeded(lambda: Untrained("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty))
    if weights is not None:
        _load_strict(net, read_state(weights), weights)

    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.net(images)[0]

    return _freeze(Features())


# ---------------------------------------------------------------------------------------------- timm networks
def dinov2_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Resample DINOv2's position embedding [1, 1 + M*M, D] to a grid x grid patch grid exactly as the
    reference DINOv2 code does at every forward (bicubic, scale factor (grid + 0.1) / M, no antialiasing), so
    that timm's ViT at 224 px reproduces the features of the torch.hub model used by FD-DINOv2."""
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:].float()
    m = math.isqrt(patch_pos.shape[1])
    if m == grid:
        return pos_embed
    scale = (grid + 0.1) / m  # the reference's offset of 0.1 guards the floor() of the output size
    patch_pos = patch_pos.reshape(1, m, m, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)


def build_timm(arch: str, weights: Path | None, **kwargs) -> nn.Module:
    """A timm model; weights go through the model module's own checkpoint filter (older key layouts, e.g. the
    Swin checkpoints of 2022, are converted), then load strictly."""
    import timm

    model = _seeded(lambda: timm.create_model(arch, pretrained=False, **kwargs))
    if weights is not None:
        state = read_state(weights)
        if "pos_embed" in state and hasattr(model, "pos_embed") and "dinov2" in arch:
            state["pos_embed"] = dinov2_pos_embed(state["pos_embed"], model.patch_embed.grid_size[0])
        filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
        if filter_fn is not None:
            state = filter_fn(state, model)
        _load_strict(model, state, weights)
    return _freeze(model)


class DINOv2Features(nn.Module):
    """uint8 [B, 3, H, W] -> CLS token after the final norm [B, D]: bicubic (antialiased) resize to 224,
    ImageNet normalisation, as FD-DINOv2 (Stein et al. 2023) and EDM2's metric code preprocess."""

    def __init__(self, arch: str, weights: Path | None, size_px: int = 224):
        super().__init__()
        self.size_px = size_px
        self.net = build_timm(arch, weights, img_size=size_px, num_classes=0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float(), size=(self.size_px, self.size_px), mode="bicubic", antialias=True)
        return self.net(_normalize(x / 255, IMAGENET_MEAN, IMAGENET_STD)).float()


class ClassifierLogits(nn.Module):
    """uint8 [B, 3, H, W] -> logits [B, num_classes]: bicubic resize to `size_px` back to uint8 values (as
    torchvision's Resize of a uint8 tensor), [0, 1], ImageNet normalisation: how the Tiny ImageNet Swin-L of
    Huynh (2022) was evaluated, at 384 px."""

    def __init__(self, arch: str, weights: Path | None, num_classes: int, size_px: int):
        super().__init__()
        self.size_px = size_px
        self.net = build_timm(arch, weights, num_classes=num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float(), size=(self.size_px, self.size_px), mode="bicubic")
        return self.net(_normalize(x.clamp(0, 255).round() / 255, IMAGENET_MEAN, IMAGENET_STD)).float()


# ---------------------------------------------------------------------------------------------- CLIP
class CLIPImageEmbedding(nn.Module):
    """uint8 [B, 3, H, W] -> L2-normalised CLIP image embedding [B, D] as CMMD (Jayasumana et al. 2024) computes
    it: [0, 1], bicubic resize to the model's input size (no antialiasing, no crop), CLIP normalisation."""

    def __init__(self, arch: str, weights: Path | None):
        super().__init__()
        import open_clip

        # quick_gelu: the OpenAI CLIP weights were trained with it; open_clip's plain config uses nn.GELU.
        root = logging.getLogger()
        level, root.level = root.level, logging.ERROR  # its "initialized randomly" warning: we load next
        try:
            clip = _seeded(lambda: open_clip.create_model(arch, pretrained=None, force_quick_gelu=True))
        finally:
            root.setLevel(level)
        if weights is not None:
            try:
                open_clip.load_checkpoint(clip, str(weights))
            except RuntimeError as exc:
                raise ConfigError(f"{weights}: does not match {arch}: {' '.join(str(exc).split())[:400]}") from None
        self.visual = _freeze(clip.visual)  # the text tower is not needed
        self.output_dim = int(self.visual.output_dim)
        size = self.visual.image_size
        self.size_px = size[0] if isinstance(size, (tuple, list)) else size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float() / 255, size=(self.size_px, self.size_px), mode="bicubic")
        return F.normalize(self.visual(_normalize(x, CLIP_MEAN, CLIP_STD)).float(), dim=-1)
