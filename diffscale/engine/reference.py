"""Load weights from one of our checkpoints, a work_dir or an export: a part's `init`, the curation reference, the
autoguidance guide, the network tools/test.py and tools/generate.py sample with."""

import fnmatch
import json
from pathlib import Path

import torch
from torch import nn

from diffscale.engine.checkpoint import LAST, newest_complete
from diffscale.errors import CheckpointError, ConfigError
from diffscale.registry import MODELS, build


def resolve_checkpoint(path: str | Path, key: str = "checkpoint") -> Path:
    """A checkpoint directory, a work_dir (its newest complete checkpoint: the one last_checkpoint names, else
    the newest that verifies) or an exported .safetensors file."""
    path = Path(path)
    if (path / LAST).is_file() or (path / "checkpoints").is_dir():
        found = newest_complete(path)
        if found is None:
            raise CheckpointError(f"{key}: work_dir '{path}' holds no complete checkpoint")
        return found
    if path.is_dir() or (path.suffix == ".safetensors" and path.is_file()):
        return path
    raise ConfigError(f"reference checkpoint '{path}': no such checkpoint directory, work_dir with {LAST}, or "
                      f".safetensors file ({key})")


def _pick_part(parts: list[str], part: str | None, path: Path, key: str) -> str:
    if part is None:
        if len(parts) == 1:
            return parts[0]
        raise ConfigError(f"{key}: '{path}' holds the parts {', '.join(parts)}; name one ({key}.part)")
    if part not in parts:
        raise ConfigError(f"{key}.part: '{path}' has no part '{part}' (it has {', '.join(parts)})")
    return part


def _average_names(meta: dict, flat: dict, prefix: str, state: dict[str, torch.Tensor]) -> list[str]:
    """The names of the averages under `prefix` ('ema.' or 'ema.<part>.') in an export. Names hold dots
    ('pf_0.050', 'decay_0.9999'), so they come from the metadata (`averages`: the names after 'ema.',
    '<part>.<average>' in multi-part exports), never from splitting keys; an export without that metadata gets
    them from its keys, as what stands between `prefix` and one of the part's own entries (`state`)."""
    if "averages" in meta:
        listed = json.loads(meta["averages"])
        head = prefix[len("ema."):]  # '' or '<part>.'
        return [n[len(head):] for n in listed if n.startswith(head)]
    found = set()
    for key in flat:
        if key.startswith(prefix):
            rest = key[len(prefix):]
            entries = [e for e in state if rest.endswith(f".{e}")]
            if entries:
                found.add(rest[:-len(max(entries, key=len)) - 1])
    return sorted(found)


def _average_of(flat: dict, prefix: str, ema: str, names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors of average `ema` under `prefix`; a key that also fits a longer known name (e.g. 'pf_0' and
    'pf_0.100') belongs to that one."""
    longer = [f"{prefix}{n}." for n in names if n != ema and n.startswith(f"{ema}.")]
    start = f"{prefix}{ema}."
    return {k[len(start):]: v for k, v in flat.items()
            if k.startswith(start) and not any(k.startswith(other) for other in longer)}


def _from_export(path: Path, ema: str | None, part: str | None, key: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    from diffscale.engine.export import ema_prefix

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            flat = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError (truncated, bad header) and OSError
        raise CheckpointError(f"{key}: export '{path}' is unreadable ({type(exc).__name__}: {exc})") from None
    parts = json.loads(meta["parts"]) if "parts" in meta else ["model"]  # exports before parts: one part 'model'
    part = _pick_part(parts, part, path, key)
    state = {k[len(part) + 1:]: v for k, v in flat.items() if k.startswith(f"{part}.")}
    if ema is None:
        return state
    prefix = ema_prefix(part, parts)
    names = _average_names(meta, flat, prefix, state)
    if ema not in names:
        raise ConfigError(f"{key}: '{path}' has no average '{ema}' of part '{part}' (it has: {names or 'none'})")
    # Older exports hold the averaged parameters only: the part's buffers come from its raw state.
    return {**state, **_average_of(flat, prefix, ema, names)}


def load_weights(path: Path, ema: str | None, part: str | None = None, key: str = "checkpoint") -> dict:
    """State dict of `part` (default: the only one) of a checkpoint or export, its parameters replaced by the
    average `ema` when given."""
    if path.suffix == ".safetensors":
        return _from_export(path, ema, part, key)
    from diffscale.engine.export import consolidate

    states, averages, _ = consolidate(path)
    part = _pick_part(list(states), part, path, key)
    state = states[part]
    if ema is None:
        return state
    if ema not in averages[part]:
        raise ConfigError(f"{key}: '{path}' has no average '{ema}' of part '{part}' "
                          f"(it has: {sorted(averages[part]) or 'none'})")
    return {**state, **averages[part][ema]}


def load_into(module: nn.Module, checkpoint: str | Path, ema: str | None, part: str | None, key: str,
              model_name: str, allow_missing: tuple[str, ...] = ()) -> None:
    """Load `part` of a checkpoint, work_dir or export (the average `ema` when given) into `module`, strictly;
    a mismatch is a ConfigError naming `key`.checkpoint and `model_name` (what the weights were meant for).
    `allow_missing`: fnmatch patterns of module entries the checkpoint may lack (they keep their values); every
    other entry must be there, and nothing unexpected may be."""
    path = resolve_checkpoint(checkpoint, f"{key}.checkpoint")
    state = load_weights(path, ema, part, key)
    if allow_missing:
        absent = [n for n in module.state_dict() if n not in state]
        not_allowed = [n for n in absent if not any(fnmatch.fnmatchcase(n, p) for p in allow_missing)]
        if len(absent) == len(module.state_dict()):
            raise ConfigError(f"{key}.checkpoint '{path}' shares no entry with {model_name}")
        if not_allowed:
            raise ConfigError(f"{key}.checkpoint '{path}' lacks {len(not_allowed)} entries of {model_name} that "
                              f"{key}.missing does not allow, e.g. {not_allowed[:3]}")
        state = {**{n: v for n, v in module.state_dict().items() if n in absent}, **state}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:400]
        raise ConfigError(f"{key}.checkpoint '{path}' does not match {model_name}: {detail}") from None


def load_frozen(model_cfg: dict, checkpoint: str | Path, ema: str | None, device: torch.device,
                key: str, part: str | None = None) -> nn.Module:
    """Build `model_cfg`, load `part` of the checkpoint strictly, freeze, eval mode, on `device`."""
    model = build(MODELS, model_cfg, f"{key}.model")
    load_into(model, checkpoint, ema, part, key, f"{key}.model")
    model.requires_grad_(False)
    return model.eval().to(device)
