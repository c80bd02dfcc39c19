"""DeeDiff's losses (diffusion/deediff.py) against the formulas written out here, for both variants, and the
backbone init from a plain U-ViT checkpoint with the heads and probes allowed to be missing."""

import math

import pytest
import torch

from diffscale.diffusion.base import Phase
from diffscale.diffusion.deediff import DeeDiffLoss
from diffscale.errors import ConfigError
from diffscale.models.deediff import HEAD_PATTERNS, DeeDiffUViT


def net() -> DeeDiffUViT:
    torch.manual_seed(0)
    return DeeDiffUViT("tiny", classifier_type="attention_probe")


def batch(n: int = 4) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"x": torch.rand(n, 3, 8, 8, generator=g) * 2 - 1, "label": torch.arange(n) % 10}


def by_hand(model, b, cond, variant: str, T: int = 1000):
    """The losses example by example and exit by exit, from the DDPM linear schedule written out."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0)
    out = []
    for i in range(b["x"].shape[0]):
        x0, eps, t = b["x"][i:i + 1], cond["noise"][i:i + 1], int(cond["t"][i])
        x_t = (math.sqrt(ab[t]) * x0 + math.sqrt(1 - ab[t]) * eps).float()
        label = torch.tensor([-1 if cond["drop"][i] else int(b["label"][i])])
        final, exits, u = model(x_t, torch.tensor([float(t)]), label, return_exits=True)
        total = ((final - eps) ** 2).mean()
        for k in range(exits.shape[0]):
            l_n = ((exits[k] - eps) ** 2).mean()
            u_hat = torch.tanh((exits[k] - eps).abs()).mean()
            if variant == "seed":
                total = total + b["x"].shape[0] * (u[k, 0] - u_hat) ** 2 + (1 - u_hat) * l_n
            else:
                total = total + (u[k, 0] - u_hat) ** 2 + (1 - u[k, 0]) * l_n
        out.append(total)
    return torch.stack([o.reshape(()) for o in out])


@pytest.mark.parametrize("variant", ["seed", "paper"])
def test_total_matches_the_formulas(variant):
    model, b = net(), batch()
    obj = DeeDiffLoss(variant=variant, schedule="linear", num_timesteps=1000, p_uncond=0.25)
    cond = obj.sample_condition(b["x"], torch.Generator().manual_seed(2))
    got = obj.per_example(model, b, cond)
    assert torch.allclose(got, by_hand(model, b, cond, variant), rtol=1e-5, atol=1e-6)


def test_gradients_follow_the_variant():
    """seed: the probes learn from L_u only, exit heads also through u_hat; paper: the target is detached (no
    exit-head gradient from L_u) and the probes also learn from L_UAL's (1 - u) weight."""
    b = batch()
    for variant in ("seed", "paper"):
        model = net()
        obj = DeeDiffLoss(variant=variant, schedule="linear")
        cond = obj.sample_condition(b["x"], torch.Generator().manual_seed(3))
        terms = obj.terms(model, b, cond)
        probe = [p for n, p in model.named_parameters() if n.startswith("probes.0.classification.2.weight")][0]
        head = [p for n, p in model.named_parameters() if n == "exit_heads.1.decoder_pred.weight"][0]
        def grad_size(loss: torch.Tensor, param: torch.Tensor) -> float:
            (g,) = torch.autograd.grad(loss.sum(), param, retain_graph=True, allow_unused=True)
            return 0.0 if g is None else float(g.abs().max())

        probe_from_ual, head_from_u = grad_size(terms["L_UAL"], probe), grad_size(terms["L_u"], head)
        if variant == "seed":
            assert probe_from_ual == 0 and head_from_u > 0
        else:
            assert probe_from_ual > 0 and head_from_u == 0


def test_logs_every_exit_and_unweighted_option():
    model, b = net(), batch()
    obj = DeeDiffLoss(schedule="linear", use_unweighted_loss=True)
    out = obj(Phase("train", ("model",)), {"model": model}, b, torch.Generator().manual_seed(4))
    assert {f"exit{i:02d}_{k}" for i in range(model.depth) for k in ("L_n", "u")} <= set(out.logs)
    plain = DeeDiffLoss(schedule="linear")
    cond = plain.sample_condition(b["x"], torch.Generator().manual_seed(4))
    with_unweighted = obj.terms(model, b, cond)
    expected = plain.terms(model, b, cond)["loss"] + with_unweighted["L_unweighted"]
    assert torch.allclose(with_unweighted["loss"], expected)
    with pytest.raises(ConfigError, match="L_simple"):
        DeeDiffLoss(variance="learned_range", loss="hybrid")
    with pytest.raises(ConfigError, match="variant"):
        DeeDiffLoss(variant="other")


def test_backbone_init_from_a_uvit_checkpoint(tmp_path):
    """A part init from a plain U-ViT export: the backbone is the checkpoint's, the heads and probes keep their
    fresh init only because `missing` allows them; anything else missing is refused."""
    from safetensors.torch import save_file

    from diffscale.engine.parts import _init_weights
    from diffscale.models.uvit import UViT

    torch.manual_seed(5)
    backbone = UViT("tiny")
    export = str(tmp_path / "uvit.safetensors")
    save_file({f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}, export)
    model = DeeDiffUViT("tiny")
    fresh_head = model.exit_heads[0].decoder_pred.weight.clone()
    _init_weights(model, dict(checkpoint=export, missing=list(HEAD_PATTERNS)), "parts.model.init")
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 700.0])
    assert torch.equal(model(x, t, None), backbone(x, t, None))
    assert torch.equal(model.exit_heads[0].decoder_pred.weight, fresh_head)
    with pytest.raises(ConfigError, match="missing does not allow"):
        _init_weights(DeeDiffUViT("tiny"), dict(checkpoint=export, missing=["probes.*"]), "parts.model.init")
    with pytest.raises(ConfigError, match="does not match"):  # without `missing`: strict, as before
        _init_weights(DeeDiffUViT("tiny"), dict(checkpoint=export), "parts.model.init")
