"""The four pre-trained networks' architectures, built untrained (random_weights=True): they run and give
features of the standard's sizes. Very few images: a ViT-L at 336 px takes seconds per image on a CPU.
Weight loading and the missing-file error are tested on the real code paths with small files."""

import pytest
import torch

from diffscale.errors import ConfigError
from diffscale.evaluation.classifier import ClassifierAccuracy
from diffscale.evaluation.cmmd import CMMD
from diffscale.evaluation.fd_dinov2 import FDDINOv2
from diffscale.evaluation.fid import FID
from diffscale.evaluation.networks import build_inception, build_timm, dinov2_pos_embed, read_state

IMAGES = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("cls", "dim"), [(FID, 2048), (FDDINOv2, 1024), (ClassifierAccuracy, 200), (CMMD, 768)],
                         ids=["inception", "dinov2-vit-l14", "swin-l", "clip-vit-l14-336"])
def test_untrained_networks_give_the_standard_feature_sizes(cls, dim):
    evaluator = cls(random_weights=True)
    assert not evaluator.comparable and evaluator.network_id().endswith(":random")
    feats = evaluator.features(IMAGES)
    assert feats.shape == (1, dim) and feats.dtype == torch.float32 and feats.isfinite().all()
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
