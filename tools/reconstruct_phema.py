#!/usr/bin/env python
"""tools/reconstruct_phema.py INPUT [INPUT ...] --std 0.08 [0.12 ...] --out FILE.safetensors [--step T]

Post-hoc EMA (EDM2 Sec. 3.2): from snapshots of power-function averages (the EMAHook's 'pf_0.050',
'pf_0.100', ... saved at several steps), reconstruct the average of any other relative std at step T
(default: the newest snapshot). INPUT: a work_dir (every complete checkpoint under checkpoints/; train with
checkpoint.keep=0 or a large keep so that they stay), checkpoint directories, or export .safetensors files
(tools/export_checkpoint.py). The output is an export file: 'model.<param>' from the newest snapshot and
'ema.phema_<std>.<param>' per std, loadable as a reference / guide with ema='phema_0.080'.
Memory: one snapshot at a time plus 8 bytes per parameter and output std (float64 accumulation).
"""

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PF_NAME = re.compile(r"^pf_(\d+(?:\.\d+)?)$")  # the EMAHook's power-function averages


def expand(inputs: list[str]) -> list[Path]:
    """Checkpoint directories and export files named by `inputs` (a work_dir gives all its complete checkpoints)."""
    from diffscale.engine.checkpoint import list_checkpoints, verify

    found = []
    for item in map(Path, inputs):
        if (item / "checkpoints").is_dir():
            for ckpt in list_checkpoints(item / "checkpoints"):
                reason = verify(ckpt)
                if reason:
                    print(f"skipping {ckpt}: {reason}", file=sys.stderr)
                else:
                    found.append(ckpt)
        elif item.is_dir() or (item.suffix == ".safetensors" and item.is_file()):
            found.append(item)
        else:
            raise FileNotFoundError(f"{item}: not a work_dir, checkpoint directory or .safetensors export")
    return found


def read(source: Path) -> tuple[int, dict[str, dict[str, "object"]], dict]:
    """(step, {average name: {param: tensor}}, model state) of one checkpoint or export."""
    if source.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(source), framework="pt") as f:
            meta = f.metadata() or {}
            if "step" not in meta:
                raise ValueError(f"{source}: no 'step' in the export's metadata")
            flat = {k: f.get_tensor(k) for k in f.keys()}
        step = int(json.loads(meta["step"]))
    else:
        from diffscale.engine.export import flat_weights

        flat, meta = flat_weights(source)
        step = int(meta["step"])
    model = {k[len("model."):]: v for k, v in flat.items() if k.startswith("model.")}
    averages: dict[str, dict] = {}
    for key, value in flat.items():
        if key.startswith("ema."):
            match = re.match(r"^ema\.(pf_\d+(?:\.\d+)?)\.(.+)$", key)
            if match:
                averages.setdefault(match.group(1), {})[match.group(2)] = value
    return step, averages, model


def collect(sources: list[Path]) -> dict[tuple[int, float], tuple[Path, str]]:
    """Pass 1: {(step, std): (source, average name)} of every power-function average (first source wins)."""
    snapshots: dict[tuple[int, float], tuple[Path, str]] = {}
    for source in sources:
        step, averages, _ = read(source)
        for name in averages:
            snapshots.setdefault((step, float(PF_NAME.match(name).group(1))), (source, name))
    return snapshots


def accumulate(snapshots: dict, keys: list[tuple[int, float]], coef, stds: list[float]) -> tuple[dict, dict]:
    """Pass 2, one source at a time: ({std: {param: sum_i coef[i, j] theta_i}} in float64, newest model state)."""
    import torch

    out: dict[float, dict[str, torch.Tensor]] = {s: {} for s in stds}
    newest_model, newest = {}, max(t for t, _ in keys)
    by_source: dict[Path, list[int]] = {}
    for i, key in enumerate(keys):
        by_source.setdefault(snapshots[key][0], []).append(i)
    for source, indices in by_source.items():
        step, averages, model = read(source)
        if step == newest:
            newest_model = model
        for i in indices:
            for name, tensor in averages[snapshots[keys[i]][1]].items():
                for j, std in enumerate(stds):
                    acc = out[std].setdefault(name, torch.zeros(tensor.shape, dtype=torch.float64))
                    acc.add_(tensor.double(), alpha=float(coef[i, j]))
    return out, newest_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="work_dirs, checkpoint directories or .safetensors exports")
    p.add_argument("--std", type=float, nargs="+", required=True, help="relative stds to reconstruct, e.g. 0.08")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--step", type=int, default=None, help="step of the reconstruction (default: the newest snapshot)")
    args = p.parse_args(argv)
    import numpy as np
    from safetensors.torch import save_file

    from diffscale.engine.phema import fit_error, solve_coefficients

    try:
        snapshots = collect(expand(args.inputs))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not snapshots:
        print("error: no power-function averages (pf_*) found in the inputs", file=sys.stderr)
        return 2
    keys = sorted(snapshots)
    steps, stds = [t for t, _ in keys], [s for _, s in keys]
    target = args.step or max(steps)
    coef = solve_coefficients(steps, stds, target, np.asarray(args.std))
    for j, std in enumerate(args.std):
        err = fit_error(steps, stds, target, std, coef[:, j])
        hint = " (poor: the snapshots do not cover this std; save them more often)" if err > 0.1 else ""
        print(f"std {std:.3f} at step {target}: {len(keys)} snapshots, profile fit error {err:.2%}{hint}")
    out, model = accumulate(snapshots, keys, coef, args.std)
    tensors = {f"model.{k}": v.contiguous() for k, v in model.items()}
    for std, params in out.items():
        tensors.update({f"ema.phema_{std:.3f}.{k}": v.float().contiguous() for k, v in params.items()})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"step": target, "averages": [f"phema_{s:.3f}" for s in args.std], "snapshots": [list(k) for k in keys]}
    save_file(tensors, args.out, metadata={k: json.dumps(v) for k, v in meta.items()})
    print(f"wrote {args.out}: averages {meta['averages']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
