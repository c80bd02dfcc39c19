"""Every shipped config loads, inherits and validates; the AJEST family differs only where it should."""

from pathlib import Path

import pytest

from diffscale.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.py") if "_base_" not in p.parts)


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_config_validates(path):
    cfg = load_config(str(path))
    assert cfg.work_dir == f"work_dirs/{path.stem}"


def test_toy_curation_family():
    cfgs = {n: load_config(str(ROOT / f"configs/toy/tree2d_{n}.py")) for n in
            ("baseline", "ref", "ajest", "early_ajest", "random")}
    assert cfgs["ref"].model.net.hidden_dim * 2 == cfgs["baseline"].model.net.hidden_dim
    assert cfgs["ref"].train_cfg.max_iters * 8 == cfgs["baseline"].train_cfg.max_iters
    curation = {n: c.hooks[0] for n, c in cfgs.items() if c.hooks[0]["type"] == "CurationHook"}
    assert set(curation) == {"ajest", "early_ajest", "random"}
    assert curation["ajest"]["selector"]["type"] == "jest" and curation["ajest"]["early"] is None
    assert curation["early_ajest"]["early"]["patience"] == 3
    assert curation["random"]["selector"] == {"type": "random"} and curation["random"]["reference"] is None
    assert curation["ajest"]["reference"]["model"]["net"]["hidden_dim"] == cfgs["ref"].model.net.hidden_dim
    for n in ("ajest", "early_ajest", "random"):  # same learner and schedule as the baseline
        assert cfgs[n].model == cfgs["baseline"].model and cfgs[n].train_cfg == cfgs["baseline"].train_cfg
