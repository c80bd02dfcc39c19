"""Exports whose averages load on their own (issue 15, item 4): `ema.<average>.*` (one part) and
`ema.<part>.<average>.*` (several) are complete state dicts, buffers included, and average names with dots
('pf_0.070', 'decay_0.9999') are matched as whole names."""

import json
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diffscale.engine import checkpoint as ckpt
from diffscale.engine.reference import load_into, load_weights
from diffscale.errors import ConfigError
from diffscale.registry import MODELS, build
from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import export_checkpoint  # noqa: E402

# EDM preconditioning has buffers (the log-variance's Fourier features) that no average holds.
MODEL = dict(type="EDMPrecond", sigma_data=0.5, label_dim=2,
             net=dict(type="ToyMLP", in_dim=2, num_classes=2, hidden_dim=8, num_layers=2))
AVERAGES = ("pf_0.070", "decay_0.9999")


def fresh_model() -> torch.nn.Module:
    return build(MODELS, MODEL, "model")


def averaged(model: torch.nn.Module, shift: float) -> dict[str, torch.Tensor]:
    """What an EMAHook keeps: the trainable parameters only, here shifted so that they differ from the raw ones."""
    return {n: p.detach() + shift for n, p in model.named_parameters()}


def write_ddp_checkpoint(path, parts: dict[str, torch.nn.Module]) -> dict[str, dict[str, dict]]:
    """A checkpoint directory as the ddp strategy writes it (trainer.pt, <part>.pt with the hooks' mirrors);
    returns {part: {average: parameters}}. Finalised like a saved one: manifest, rename, pointer."""
    final, path = path, ckpt.temp_dir(path)
    path.mkdir(parents=True)
    ckpt.save_file({"strategy_name": "ddp", "step": 3, "nimg": 12,
                    "parts": {n: {"trainable": True} for n in parts}}, path / "trainer.pt")
    kept = {}
    for i, (name, module) in enumerate(parts.items()):
        hook = "EMAHook" if name == "model" else f"EMAHook.{name}"
        kept[name] = {avg: averaged(module, 0.1 * (i + j + 1)) for j, avg in enumerate(AVERAGES)}
        ckpt.save_file({"model": module.state_dict(),
                        "mirrors": {f"{hook}/{avg}": v for avg, v in kept[name].items()}}, path / f"{name}.pt")
    ckpt.finalize(path, final, final.parent, keep=0)
    return kept


def export(tmp_path, parts: dict[str, torch.nn.Module]):
    kept = write_ddp_checkpoint(tmp_path / "iter_0000003", parts)
    out = tmp_path / "export.safetensors"
    assert export_checkpoint.main([str(tmp_path / "iter_0000003"), str(out)]) == 0
    with safe_open(str(out), framework="pt") as f:
        flat, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    return out, flat, meta, kept


def group(flat: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}


@pytest.mark.parametrize("avg", AVERAGES)
def test_one_part_average_loads_strictly_alone(tmp_path, avg):
    torch.manual_seed(0)
    out, flat, meta, kept = export(tmp_path, {"model": fresh_model()})
    assert json.loads(meta["averages"]) == sorted(AVERAGES)
    model = fresh_model()
    model.load_state_dict(group(flat, f"ema.{avg}."), strict=True)  # missing buffers before the fix
    assert all(torch.equal(model.state_dict()[k], v) for k, v in kept["model"][avg].items())
    assert torch.equal(model.logvar_fourier.freqs, flat["model.logvar_fourier.freqs"])


def test_multi_part_average_loads_strictly_alone(tmp_path):
    torch.manual_seed(0)
    out, flat, meta, kept = export(tmp_path, {"generator": fresh_model(), "fake_score": fresh_model()})
    assert "generator.pf_0.070" in json.loads(meta["averages"])
    for part in ("generator", "fake_score"):
        for avg in AVERAGES:
            model = fresh_model()
            model.load_state_dict(group(flat, f"ema.{part}.{avg}."), strict=True)
            assert all(torch.equal(model.state_dict()[k], v) for k, v in kept[part][avg].items())
    # Through the loader every tool uses: the part and its dotted average by name.
    model = fresh_model()
    load_into(model, out, "decay_0.9999", "fake_score", "init", "the model")
    assert torch.equal(model.state_dict()["net.out.weight"], kept["fake_score"]["decay_0.9999"]["net.out.weight"])


def test_average_names_are_whole_names_not_prefixes(tmp_path):
    """'pf_0' is no average of an export holding 'pf_0.070': the names are matched whole, never split on '.'."""
    torch.manual_seed(0)
    out, *_ = export(tmp_path, {"model": fresh_model()})
    for wrong in ("pf_0", "pf_0.07", "decay_0"):
        with pytest.raises(ConfigError) as exc:
            load_weights(out, wrong, None, "init")
        assert f"has no average '{wrong}' of part 'model' (it has: ['decay_0.9999', 'pf_0.070'])" in str(exc.value)
    state = load_weights(out, "pf_0.070", None, "init")
    assert set(state) == set(fresh_model().state_dict())


def test_an_export_without_metadata_or_buffers_still_loads(tmp_path):
    """An older export (parameters-only averages, no metadata): the names come from the keys, the buffers from
    the raw state."""
    torch.manual_seed(0)
    raw = fresh_model()
    avg = averaged(raw, 0.5)
    tensors = {**{f"model.{k}": v for k, v in raw.state_dict().items()},
               **{f"ema.pf_0.070.{k}": v for k, v in avg.items()}}
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "old.safetensors")
    with pytest.raises(ConfigError, match=r"no average 'pf_0\.07' of part 'model' \(it has: \['pf_0\.070'\]\)"):
        load_weights(tmp_path / "old.safetensors", "pf_0.07", None, "init")
    model = fresh_model()
    load_into(model, tmp_path / "old.safetensors", "pf_0.070", None, "init", "the model")
    assert torch.equal(model.state_dict()["net.out.weight"], avg["net.out.weight"])
