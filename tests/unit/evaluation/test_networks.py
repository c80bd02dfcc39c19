"""The four pre-trained networks' architectures, built untrained (random_weights=True): they run and give
features of the standard's sizes. Very few images: a ViT-L at 336 px takes seconds per image on a CPU.
Weight loading and the missing-file error are tested on the real code paths with small files; so is the
'comparable' check (the weight file's SHA-256 against the recorded official digests) and its table."""

import hashlib
import re

import pytest
import torch
from torch import nn

from diffscale.errors import ConfigError
from diffscale.evaluation import networks
from diffscale.evaluation.classifier import ClassifierAccuracy
from diffscale.evaluation.cmmd import CMMD
from diffscale.evaluation.fd_dinov2 import FDDINOv2
from diffscale.evaluation.fid import FID
from diffscale.evaluation.networks import (
    build_inception,
    build_timm,
    dinov2_pos_embed,
    is_torchscript,
    load_clip_weights,
    read_state,
    sha256_file,
)
from diffscale.evaluation.pipeline import format_table

IMAGES = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("cls", "dim"), [(FID, 2048), (FDDINOv2, 1024), (ClassifierAccuracy, 200), (CMMD, 768)],
                         ids=["inception", "dinov2-vit-l14", "swin-l", "clip-vit-l14-336"])
def test_untrained_networks_give_the_standard_feature_sizes(cls, dim):
    evaluator = cls(random_weights=True)
    assert not evaluator.comparable and evaluator.network_id().endswith(":random")
    assert evaluator.provenance() == "NO: random network (tests only)"
    feats = evaluator.features(IMAGES)
    assert feats.shape == (1, dim) and feats.dtype == torch.float32 and feats.isfinite().all()
    if cls is FID:  # He-initialised: PyTorch's default draw left the pool features at ~1e-8
        assert 0.01 < feats.abs().mean() < 10
    if cls is CMMD:
        assert torch.allclose(feats.norm(dim=1), torch.ones(1))  # CMMD embeds on the unit sphere


@pytest.mark.parametrize("cls", [FID, FDDINOv2, ClassifierAccuracy, CMMD])
def test_missing_weights_name_the_path_and_the_download(cls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default path is relative: not the checkout's weights/, if it has them
    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigError) as err:
        cls(weights=str(missing))
    message = str(err.value)
    assert str(missing) in message and cls.SOURCE in message and "https://" in cls.SOURCE
    with pytest.raises(ConfigError, match=cls.DEFAULT_WEIGHTS.replace(".", r"\.")):
        cls()  # the default path, which the README tells users to fill


def test_inception_loads_a_weight_file_strictly(tmp_path):
    untrained = build_inception(None)
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in untrained.net.state_dict().items()}
    torch.save(state, tmp_path / "inception.pth")
    loaded = build_inception(tmp_path / "inception.pth")
    assert all(torch.equal(loaded.net.state_dict()[k], v) for k, v in state.items())
    torch.save({k: v for k, v in list(state.items())[1:]}, tmp_path / "partial.pth")
    with pytest.raises(ConfigError, match="does not match the network"):
        build_inception(tmp_path / "partial.pth")


def test_dinov2_weights_at_518_px_load_at_224_px(tmp_path):
    """A checkpoint as distributed (518 px: a 37 x 37 grid) loads into the 224 px model (16 x 16), the position
    embedding resampled as DINOv2's own code does."""
    from safetensors.torch import save_file

    big = build_timm("vit_small_patch14_dinov2", None, img_size=518, num_classes=0)
    state = {k: v.contiguous() for k, v in big.state_dict().items()}
    save_file(state, str(tmp_path / "dinov2.safetensors"))
    assert read_state(tmp_path / "dinov2.safetensors")["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    small = build_timm("vit_small_patch14_dinov2", tmp_path / "dinov2.safetensors", img_size=224, num_classes=0)
    assert torch.equal(small.pos_embed, dinov2_pos_embed(state["pos_embed"], 16))
    assert torch.equal(small.blocks[3].attn.qkv.weight, state["blocks.3.attn.qkv.weight"])


def test_dinov2_pos_embed_resampling():
    pos = torch.randn(1, 1 + 37 * 37, 8)
    out = dinov2_pos_embed(pos, 16)
    assert out.shape == (1, 1 + 16 * 16, 8) and torch.equal(out[:, 0], pos[:, 0])
    assert dinov2_pos_embed(pos, 37) is pos
    constant = torch.ones(1, 1 + 37 * 37, 8)  # bicubic weights sum to 1: a constant field stays constant
    assert torch.allclose(dinov2_pos_embed(constant, 16), torch.ones(1, 257, 8), atol=1e-5)


# ---------------------------------------------------------------------------------------------- comparable
def test_sha256_is_chunked_and_cached_by_path_mtime_and_size(tmp_path, monkeypatch):
    path = tmp_path / "w.bin"
    path.write_bytes(b"x" * (3 << 20) + b"tail")  # several chunks
    reads = []
    read = networks._read_sha256
    monkeypatch.setattr(networks, "_read_sha256", lambda p: reads.append(p) or read(p))
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(tmp_path / "." / "w.bin") == sha256_file(path) and len(reads) == 1  # one read per file
    path.write_bytes(b"other")  # another size (and mtime): read again
    assert sha256_file(path) == hashlib.sha256(b"other").hexdigest() and len(reads) == 2


def test_recorded_digests_are_the_ones_the_libraries_check():
    """CMMD: the full SHA-256 that OpenAI's download URL carries, as open_clip and torch-fidelity list it (both
    verify downloads against it). FID: the hash prefix of torch-fidelity's release file name (torch.hub's rule)."""
    from open_clip.pretrained import get_pretrained_url
    from torch.hub import HASH_REGEX
    from torch_fidelity.feature_extractor_clip import MODEL_METADATA
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert CMMD.OFFICIAL_SHA256 == (get_pretrained_url("ViT-L-14-336", "openai").split("/")[-2],)
    assert CMMD.OFFICIAL_SHA256 == (MODEL_METADATA["clip-vit-l-14-336px"]["hash"],)
    assert FID.OFFICIAL_SHA256 == (HASH_REGEX.search(URL_INCEPTION_V3.split("/")[-1]).group(1),)
    assert FID.SOURCE == URL_INCEPTION_V3
    assert FDDINOv2.OFFICIAL_SHA256 == ClassifierAccuracy.OFFICIAL_SHA256 == ()  # none could be established
    for cls in (FID, FDDINOv2, ClassifierAccuracy, CMMD):
        assert all(re.fullmatch(r"[0-9a-f]{8,64}", d) for d in cls.OFFICIAL_SHA256)


def test_comparable_only_for_the_official_file(tmp_path, monkeypatch):
    """Weight files are hashed, not loaded: any bytes will do."""
    path = tmp_path / "inception.pth"
    path.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    short = f"inception.pth sha256:{digest[:12]}"
    fid = FID(weights=str(path))
    assert not fid.comparable and fid.provenance() == f"NO: not the official weights (SHA-256 differs) ({short})"
    monkeypatch.setattr(FID, "OFFICIAL_SHA256", (digest[:8],))  # a prefix rule, as recorded for FID
    assert fid.comparable and fid.provenance() == f"yes ({short})"
    assert not FID(weights=str(path), precision="bf16").comparable
    monkeypatch.setattr(ClassifierAccuracy, "OFFICIAL_SHA256", (digest,))
    small = ClassifierAccuracy(weights=str(path), arch="resnet18")
    assert small.provenance() == f"NO: architecture resnet18, not swin_large_patch4_window12_384 ({short})"
    dinov2 = FDDINOv2(weights=str(path))
    assert dinov2.provenance() == f"NO: no official digest is recorded to check this file against ({short})"


def test_table_says_which_file_was_used():
    result = {"metrics": {"fid": 2.5, "fd_dinov2": 80.0, "top1_acc": 0.5}, "num": 10,
              "comparable": {"fid": True, "fd_dinov2": False, "top1_acc": False},
              "provenance": {"fid": "yes (w.pth sha256:6726825d0af5)", "fd_dinov2": "NO: random network (tests only)"},
              "seconds": {"total": 1.0, "evaluators": 0.5}}
    lines = format_table(result).splitlines()
    assert lines[2].endswith("  yes (w.pth sha256:6726825d0af5)") and lines[2].startswith("fid ")
    assert lines[3].endswith("  NO: random network (tests only)")
    assert lines[4].endswith("  NO (random or substituted network)")  # a result without provenance: the flag


# ---------------------------------------------------------------------------------------------- CLIP files
def torchscript_archive(state: dict[str, torch.Tensor], path) -> None:
    """A TorchScript archive holding `state` as buffers of nested modules, as OpenAI's CLIP files hold theirs."""
    root = nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, nn.Module())
            module = getattr(module, name)
        module.register_buffer(leaf, value)
    with pytest.warns(FutureWarning):  # torch.jit is deprecated
        torch.jit.save(torch.jit.script(root), str(path))


def test_openai_torchscript_files_load_strictly(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    extras = {"input_resolution": torch.tensor(336), "context_length": torch.tensor(77), "vocab_size": torch.tensor(9)}
    torchscript_archive({**state, **extras}, tmp_path / "openai.pt")
    torch.save(state, tmp_path / "plain.pt")
    assert is_torchscript(tmp_path / "openai.pt") and not is_torchscript(tmp_path / "plain.pt")
    load_clip_weights(model, "ViT-L-14-336", tmp_path / "openai.pt")  # the extra ints are dropped
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    torchscript_archive({k: v for k, v in list(state.items())[1:]}, tmp_path / "partial.pt")
    with pytest.raises(ConfigError, match="does not match ViT-L-14-336"):
        load_clip_weights(model, "ViT-L-14-336", tmp_path / "partial.pt")
