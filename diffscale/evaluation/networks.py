"""The feature networks of the evaluators, built from local weight files (never downloaded at run time).

Each builder returns a frozen module in eval mode on the CPU, mapping uint8 images [B, 3, H, W] (any H, W) to
features [B, D] float32, with the resizing and normalisation of the metric's reference implementation inside.
`weights=None` builds the same architecture untrained, from a fixed seed, so that the reference statistics
and the evaluated images of a test see the same random network (the Inception re-drawn at a usable scale: see
`he_init`). `sha256_file` identifies a weight file for the evaluators' comparability check (base.py).
Heavy libraries (torch-fidelity, timm, open_clip) are imported only when a network is built.
"""

import hashlib
import io
import logging
import math
import sys
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from diffscale.errors import ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
RANDOM_SEED = 0  # seed of every untrained network: a test's reference and evaluation share one network
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (resolved path, mtime in ns, size) -> SHA-256 hex


def _read_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    """The SHA-256 (hex) of a file, read in 1 MiB chunks (weight files reach 1.7 GB) and computed once per process
    while the file keeps its path, modification time and size: every evaluation of a training run asks again."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_mtime_ns, stat.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = _read_sha256(resolved)
    return _DIGESTS[key]


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


def he_init(model: nn.Module) -> nn.Module:
    """Re-draw the convolutions and linear layers of an untrained network with He's initialisation (normal, fan-in,
    ReLU gain: variance 2 / fan_in) and zero biases, and set BatchNorm to identity statistics (mean 0, variance 1,
    scale 1, shift 0).

    Why: PyTorch's default draw (uniform, variance 1 / (3 fan_in)) shrinks the signal's second moment about six-fold
    per conv + ReLU, so after Inception's ~20 layers the untrained pool features are ~1e-8 and the FID between any
    two image sets ~1e-13: a test could not tell a right distance from a wrong one. He's variance keeps the second
    moment through each ReLU layer; the features come out O(0.1) and differ between images."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.reset_parameters()  # running statistics and affine parameters at identity
    return model


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
    (it resizes to 299 with TF1's bilinear rule and scales to [-1, 1] itself). `weights=None`: untrained, drawn by
    `he_init`; `net.state_dict()` of the result is a weight file in torch-fidelity's format."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Untrained(FeatureExtractorInceptionV3):
        # The constructor loads its weights from a path (or downloads them when the path is None). We hand it a
        # serialised None, keep the initial weights, and load the file ourselves with weights_only=True.
        def load_state_dict(self, state_dict, *args, **kwargs):
            return None if state_dict is None else super().load_state_dict(state_dict, *args, **kwargs)

    empty = io.BytesIO()
    torch.save(None, empty)
    empty.seek(0)
    def untrained() -> nn.Module:
        model = Untrained("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)
        return he_init(model) if weights is None else model  # loaded next: no point in a second draw

    net = _seeded(untrained)
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
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # ints in OpenAI's archives, no weights


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (OpenAI's CLIP release files are): a zip with a constants.pkl record, which plain
    torch.save files do not have."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def torchscript_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a TorchScript archive. torch.jit.load unpickles no Python objects and runs no Python code
    (the archive's code is TorchScript), which is why it is acceptable where torch.load's weights_only, which
    refuses these archives outright, is the rule."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; OpenAI ships TorchScript
        module = torch.jit.load(str(path), map_location="cpu")
    state = dict(module.state_dict())
    for key in OPENAI_EXTRA_KEYS:
        state.pop(key, None)
    return state


def load_clip_weights(clip: nn.Module, arch: str, path: Path) -> None:
    """open_clip's checkpoint loader (open_clip / timm-hub files), or OpenAI's own release file (ViT-L-14-336px.pt,
    a TorchScript archive whose SHA-256 the official code publishes), whose keys are open_clip's; strictly."""
    import open_clip

    try:
        if is_torchscript(path):
            clip.load_state_dict(torchscript_state(path), strict=True)  # fp16 tensors are cast into the fp32 model
        else:
            open_clip.load_checkpoint(clip, str(path))
    except RuntimeError as exc:
        raise ConfigError(f"{path}: does not match {arch}: {' '.join(str(exc).split())[:400]}") from None


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
            load_clip_weights(clip, arch, weights)
        self.visual = _freeze(clip.visual)  # the text tower is not needed
        self.output_dim = int(self.visual.output_dim)
        size = self.visual.image_size
        self.size_px = size[0] if isinstance(size, (tuple, list)) else size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float() / 255, size=(self.size_px, self.size_px), mode="bicubic")
        return F.normalize(self.visual(_normalize(x, CLIP_MEAN, CLIP_STD)).float(), dim=-1)
