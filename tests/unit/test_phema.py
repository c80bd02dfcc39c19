"""Post-hoc EMA: closed-form profile inner products against numerical integration, and reconstructions against
averages tracked directly with the trainer's own power-function EMA (engine/ema.py)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate

from diffscale.engine.ema import ParamEMA, power_beta, std_to_gamma
from diffscale.engine.phema import fit_error, profile_inner, solve_coefficients

ROOT = Path(__file__).resolve().parents[2]
T, EVERY = 2000, 200  # steps simulated; snapshot interval
STORED, TARGET = (0.050, 0.100), 0.070


@pytest.mark.parametrize(("t_a", "s_a", "t_b", "s_b"), [(100, 0.05, 100, 0.05), (60, 0.10, 100, 0.05),
                                                         (100, 0.05, 37, 0.20), (1e6, 0.01, 8e5, 0.15)])
def test_profile_inner_product_matches_quadrature(t_a, s_a, t_b, s_b):
    g_a, g_b = std_to_gamma(s_a), std_to_gamma(s_b)
    # Profiles on (0, 1] after substituting tau = m u, m = min(t_a, t_b), which keeps quad well scaled.
    m = min(t_a, t_b)
    p = lambda u, t, g: (g + 1) / t * (m * u / t) ** g
    numeric = integrate.quad(lambda u: p(u, t_a, g_a) * p(u, t_b, g_b) * m, 0, 1, epsabs=0, epsrel=1e-11)[0]
    assert profile_inner(t_a, g_a, t_b, g_b) == pytest.approx(numeric, rel=1e-8)


@pytest.fixture(scope="module")
def run() -> dict:
    """A scalar-per-entry 'parameter' trajectory (random walk plus oscillations of several periods), averaged by
    ParamEMA with stds 0.050, 0.100 (snapshots every EVERY steps) and 0.070 (tracked directly to the end)."""
    gen = torch.Generator().manual_seed(0)
    steps = torch.arange(1, T + 1, dtype=torch.float32)[:, None]
    theta = torch.randn(T, 32, generator=gen).cumsum(0) / 10 + torch.sin(steps / 150 * torch.arange(1, 33))
    names = {f"pf_{s:.3f}": s for s in (*STORED, TARGET)}
    ema = ParamEMA({"w": theta[0]}, list(names))
    snapshots = []
    for t in range(1, T + 1):
        ema.update({"w": theta[t - 1]}, {k: power_beta(std_to_gamma(s), t) for k, s in names.items()})
        if t % EVERY == 0:
            snapshots += [(t, s, ema.averages[f"pf_{s:.3f}"]["w"].clone()) for s in STORED]
    return {"snapshots": snapshots, "direct": ema.averages[f"pf_{TARGET:.3f}"]["w"],
            "stored": {s: ema.averages[f"pf_{s:.3f}"]["w"] for s in STORED}}


def reconstruct(snapshots: list, step: int, std: float) -> torch.Tensor:
    coef = solve_coefficients([t for t, _, _ in snapshots], [s for _, s, _ in snapshots], step, std)[:, 0]
    return sum(float(c) * w.double() for c, (_, _, w) in zip(coef, snapshots, strict=True))


def test_reconstruction_matches_a_directly_tracked_average(run):
    got = reconstruct(run["snapshots"], T, TARGET)
    err = (got - run["direct"].double()).abs().max().item()
    # Measured 0.0062; the trajectory moves by ~1.3 between the two stored averages.
    assert err < 0.015
    naive = 0.5 * (run["stored"][0.050] + run["stored"][0.100])  # what one would do without post-hoc EMA
    assert (naive - run["direct"]).abs().max().item() > 10 * err
    in_t, in_s = [t for t, _, _ in run["snapshots"]], [s for _, s, _ in run["snapshots"]]
    assert fit_error(in_t, in_s, T, TARGET, solve_coefficients(in_t, in_s, T, TARGET)[:, 0]) < 0.02


@pytest.mark.parametrize(("step", "std"), [(T, 0.050), (T // 2, 0.100)])
def test_reconstructing_a_stored_average_returns_it(run, step, std):
    stored = next(w for t, s, w in run["snapshots"] if t == step and s == std)
    assert torch.allclose(reconstruct(run["snapshots"], step, std), stored.double(), rtol=0, atol=1e-9)


def test_tool_writes_a_loadable_export(run, tmp_path):
    from safetensors.torch import save_file

    from diffscale.engine.reference import load_weights

    spec = importlib.util.spec_from_file_location("reconstruct_phema", ROOT / "tools/reconstruct_phema.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    main = tool.main

    by_step: dict[int, dict] = {}
    for t, s, w in run["snapshots"]:
        by_step.setdefault(t, {"model.w": torch.full_like(w, float(t)), "model.buf": torch.arange(3)})
        by_step[t][f"ema.pf_{s:.3f}.w"] = w
    paths = []
    for t, tensors in by_step.items():  # the layout of tools/export_checkpoint.py
        paths.append(str(tmp_path / f"iter_{t:07d}.safetensors"))
        save_file(tensors, paths[-1], metadata={"step": json.dumps(t), "averages": json.dumps(["pf_0.050"])})
    out = tmp_path / "phema.safetensors"
    assert main([*paths, "--std", "0.07", "0.05", "--out", str(out)]) == 0
    weights = load_weights(out, "phema_0.070")
    assert torch.allclose(weights["w"].double(), reconstruct(run["snapshots"], T, TARGET), atol=1e-5)
    assert torch.equal(weights["buf"], torch.arange(3))  # the newest snapshot's model state rides along
    assert torch.allclose(load_weights(out, "phema_0.050")["w"], run["stored"][0.050], atol=1e-5)
    assert main([str(tmp_path / "missing"), "--std", "0.07", "--out", str(out)]) == 2
    np.testing.assert_array_equal(load_weights(out, None)["w"].numpy(), np.full(32, float(T), np.float32))
