"""Import NVlabs' EDM and EDM2 network pickles into our export format without running the code they carry.

The published pickles (edm-cifar10-32x32-cond-vp.pkl, edm2-img512-xs-*.pkl, ...) are dicts such as
{'ema': <network>, 'loss_fn': ..., 'dataset_kwargs': ...}. Their networks were pickled by
`torch_utils.persistence`: each module is `_reconstruct_persistent_obj(meta)`, meta holding 'type', 'version',
'module_src' (the Python source of the module that defined the class), 'class_name' and 'state' (the module's
`__dict__`: `_parameters`, `_buffers`, `_modules`, plain attributes). `pickle.load` would exec module_src.

`OfficialUnpickler` resolves globals from an allow-list only: tensor and storage reconstruction (storages are
read back with torch.load(weights_only=True)), OrderedDict, sets, numpy arrays and scalars
(utils/pickle_globals.py). The persistence hook
becomes `PersistedObject` (the meta, module_src kept as text and never run); a class of the official code bases
(dnnlib, torch_utils, training) or a torch container becomes an inert `PickledRecord`; any other global is
refused with a CheckpointError naming the file and the global.

Mapping (strict: every tensor of the network used, every shape checked against the network we build):
- EDM `EDMPrecond` around `SongUNet` (DDPM++ / NCSN++, detected from keys and shapes) -> our
  EDMPrecond(logvar_channels=0, net=SongUNet): 'model.<key>' -> 'net.<key>' (models/song_unet.py keeps EDM's keys).
- EDM2 `Precond` around `UNet` -> EDM2Precond(net=EDM2UNet): 'unet.enc.<R>x<R>_conv' -> 'net.conv_in';
  the other 'unet.enc.<name>' / 'unet.dec.<name>' entries -> 'net.enc.<i>' / 'net.dec.<i>' in the official order
  (per level from the top: down, block0, block1, ...; decoder from the bottom: in0, in1 or up, block0, ...);
  'unet.emb_fourier / emb_noise / emb_label / out_conv / out_gain' -> 'net.<same>'; 'logvar_fourier',
  'logvar_linear' unchanged. Gains (emb_gain, out_gain) are 0-d there and [1] here (FSDP2 cannot shard 0-d).
What the weights cannot show (heads, GroupNorm eps, balances, dropout, sigma_data) is read from the recorded
attributes and checked. Other preconditionings (VP, VE, iDDPM: the baseline pickles) and DhariwalUNet (ADM) are
refused with a ConfigError.

`write_export` writes what reference.load_weights reads: 'model.<key>' float32 tensors (and 'ema.<name>.<key>'
with `ema_name`), metadata parts, averages, step, nimg, strategy, plus 'model_config' (the config dict that builds
the network), 'source' (file name, SHA-256, class, entry) and, for EDM2 latent models, 'encoder' (VAE name and
the latent scale / bias).
"""

import collections
import hashlib
import io
import json
import math
import pickle
import re
from pathlib import Path

import torch

from diffscale.errors import CheckpointError, ConfigError
from diffscale.utils.pickle_globals import numpy_globals

_INERT_MODULES = ("dnnlib", "torch_utils", "training")  # the official code bases: their classes become records


class PersistedObject:
    """A `torch_utils.persistence` object as recorded in the pickle: class name and state; the module source is
    kept as text (and its SHA-256), never executed."""

    def __init__(self, meta: dict):
        if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict):
            raise pickle.UnpicklingError("a persistent object without a state dict")
        self.class_name = str(meta.get("class_name"))
        self.version = meta.get("version")
        self.state = meta["state"]
        src = meta.get("module_src") or ""
        self.module_src_sha256 = hashlib.sha256(src.encode() if isinstance(src, str) else bytes(src)).hexdigest()


class PickledRecord(dict):
    """Any other class of the official code (EasyDict, a torch ModuleDict, ...): constructor arguments, dict items
    and state recorded, no code run."""

    pickled_global = "?"

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        self.state = state


def _record_type(module: str, name: str) -> type:
    return type(name, (PickledRecord,), {"pickled_global": f"{module}.{name}"})


def _load_storage(data: bytes):
    """torch.storage._load_from_bytes, but through torch's weights-only unpickler (no code)."""
    storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"a storage record holds {type(storage).__name__}")
    return storage


def _rebuild_tensor(storage, offset, size, stride, *ignored):
    """torch._utils._rebuild_tensor(_v2) as a plain tensor (requires_grad, hooks and metadata dropped)."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError("a tensor without a storage")
    return torch._utils._rebuild_tensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *ignored):
    """torch._utils._rebuild_parameter(_with_state): the parameter's data as a plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a parameter without tensor data")
    return data


_ALLOWED = {  # numpy arrays and scalars, sets, tensors and storages, the persistence hook
    **numpy_globals(), ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray, ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.storage", "_load_from_bytes"): _load_storage, ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor, ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistedObject,
}


class OfficialUnpickler(pickle.Unpickler):
    """Unpickles an NVlabs network pickle without importing or running anything it names (module docstring)."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module.split(".")[0] in _INERT_MODULES or module.startswith("torch.nn.modules."):
            return _record_type(module, name)
        raise CheckpointError(f"{self.source}: refusing to unpickle the global {module}.{name} (only tensors, "
                              f"containers and records of the EDM / EDM2 code are read)")


def load_official_pickle(path: str | Path) -> tuple[object, str]:
    """(the unpickled top-level object, the file's SHA-256); a refused or unreadable pickle is a CheckpointError
    naming the file."""
    path, sha = Path(path), hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                sha.update(chunk)
            f.seek(0)
            return OfficialUnpickler(f, str(path)).load(), sha.hexdigest()
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # truncated or corrupt: pickle raises many kinds
        raise CheckpointError(f"{path}: not a readable network pickle ({type(exc).__name__}: {exc})") from None


def children(obj) -> dict:
    """The submodules of a recorded module (persisted object or record) by name."""
    state = obj.state if isinstance(obj, PersistedObject | PickledRecord) else None
    return dict(state.get("_modules") or {}) if isinstance(state, dict) else {}


def class_of(obj) -> str:
    if isinstance(obj, PersistedObject):
        return obj.class_name
    return type(obj).pickled_global.rsplit(".", 1)[-1] if isinstance(obj, PickledRecord) else type(obj).__name__


def module_tensors(obj, source: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every parameter and buffer of a recorded module tree as flat state-dict keys ('enc.32x32_conv.weight')."""
    state = obj.state if isinstance(obj, PersistedObject | PickledRecord) else None
    if not isinstance(state, dict) or "_parameters" not in state:
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the network'} is not a recorded torch module "
                          f"({class_of(obj)})")
    out = {}
    for group in ("_parameters", "_buffers"):
        for name, t in (state.get(group) or {}).items():
            if t is not None:
                if not isinstance(t, torch.Tensor):
                    raise ConfigError(f"{source}: {prefix}{name} is a {type(t).__name__}, not a tensor")
                out[prefix + name] = t
    for name, child in children(obj).items():
        if child is not None:
            out.update(module_tensors(child, source, f"{prefix}{name}."))
    return out


def attr(obj, name: str, default=None):
    """A plain attribute of a recorded module (numpy scalars as Python numbers)."""
    value = obj.state.get(name, default) if isinstance(getattr(obj, "state", None), dict) else default
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value


def walk(obj, prefix: str = ""):
    """(path, recorded module) for the module and every submodule, parents first."""
    yield prefix, obj
    for name, child in children(obj).items():
        if child is not None:
            yield from walk(child, f"{prefix}{name}.")


_RES = re.compile(r"^(\d+)x\1_(.+)$")


def _entries(keys, group: str) -> list[tuple[int, str]]:
    """(resolution, rest) of each distinct '<group>.<R>x<R>_<rest>' entry, in first-seen order."""
    seen = {}
    for k in keys:
        if k.startswith(group + "."):
            m = _RES.match(k.split(".")[1])
            if m:
                seen.setdefault(k.split(".")[1], (int(m.group(1)), m.group(2)))
    return list(seen.values())


def _multiple(source: str, what: str, value: int, base: int) -> int:
    if value % base:
        raise ConfigError(f"{source}: {what} {value} is not a multiple of the base width {base}")
    return value // base


def _expect(source: str, path: str, obj, name: str, ok, wanted: str) -> None:
    """A recorded attribute our network fixes (e.g. GroupNorm eps) has the value it needs, or a ConfigError."""
    value = attr(obj, name)
    if not ok(value):
        raise ConfigError(f"{source}: {path}{name} = {value!r}; our network needs {wanted}")


def _build_meta(model_cfg: dict) -> torch.nn.Module:
    from diffscale.registry import MODELS, build

    with torch.device("meta"):  # shapes only: an EDM2-XXL costs no memory
        return build(MODELS, model_cfg, "model")


def _fit_and_check(source: str, mapped: dict[str, torch.Tensor], model_cfg: dict) -> dict[str, torch.Tensor]:
    """Mapped tensors in float32, 0-d gains reshaped to our [1], checked key by key against the built network."""
    model = _build_meta(model_cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    fitted = {k: (v.reshape(1) if v.ndim == 0 and shapes.get(k) == (1,) else v).float() for k, v in mapped.items()}
    missing, extra = sorted(set(shapes) - set(fitted)), sorted(set(fitted) - set(shapes))
    if missing or extra:
        raise ConfigError(f"{source}: the pickle does not match the network built from it: missing "
                          f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {extra[:3]}")
    for k, shape in shapes.items():
        if tuple(fitted[k].shape) != shape:
            raise ConfigError(f"{source}: {k}: shape {list(fitted[k].shape)} in the pickle, {list(shape)} in ours")
    return fitted


def _resample_filter(source: str, tensors: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """The 1-D filter (1, 1) or (1, 3, 3, 1) whose normalised outer product every 'resample_filter' buffer holds."""
    found = [(k, v) for k, v in tensors.items() if k.endswith("resample_filter")]
    if not found:
        return (1, 1)  # one level: nothing resamples
    row = found[0][1].reshape(found[0][1].shape[-2:])[0].double()
    taps = tuple(int(round(x)) for x in (row / row.min()).tolist())
    f = torch.tensor(taps, dtype=torch.float64)
    expected = (torch.outer(f, f) / f.sum().square()).float()
    for k, v in found:
        if v.shape[-2:] != expected.shape or not torch.allclose(v.reshape(expected.shape).float(), expected):
            raise ConfigError(f"{source}: {k} is not the filter {list(taps)} of the other resampling layers")
    return taps


def songunet_config(source: str, t: dict[str, torch.Tensor], unet) -> dict:
    """SongUNet arguments from the official network's tensors (keys under 'model.' stripped) and attributes."""
    enc, dec = _entries(t, "enc"), _entries(t, "dec")
    convs = [r for r, rest in enc if rest == "conv"]
    if len(convs) != 1:
        raise ConfigError(f"{source}: expected one input conv 'enc.<R>x<R>_conv' in the SongUNet, found {len(convs)}")
    res0 = convs[0]
    mc, in_ch = t[f"enc.{res0}x{res0}_conv.weight"].shape[:2]
    resolutions = sorted({r for r, _ in enc}, reverse=True)
    if resolutions != [res0 >> level for level in range(len(resolutions))]:
        raise ConfigError(f"{source}: encoder resolutions {resolutions} do not halve from {res0}")
    num_blocks = sum(r == res0 and rest.startswith("block") for r, rest in enc)
    try:
        mult = [_multiple(source, f"enc.{r}x{r}_block0 width", t[f"enc.{r}x{r}_block0.conv0.weight"].shape[0], mc)
                for r in resolutions]
        out_ch = t[f"dec.{res0}x{res0}_aux_conv.weight"].shape[0]
        emb_ch, noise_ch = t["map_layer0.weight"].shape
    except KeyError as exc:
        raise ConfigError(f"{source}: not a SongUNet: no tensor {exc.args[0]}") from None
    names = {rest for _, rest in enc} | {rest for _, rest in dec}
    skip_decoder = "aux_up" in names or sum(rest == "aux_conv" for _, rest in dec) > 1
    blocks = [m for _, m in walk(unet) if class_of(m) == "UNetBlock"]
    return dict(
        img_resolution=res0, in_channels=int(in_ch), out_channels=int(out_ch),
        label_dim=int(t["map_label.weight"].shape[1]) if "map_label.weight" in t else 0,
        augment_dim=int(t["map_augment.weight"].shape[1]) if "map_augment.weight" in t else 0,
        model_channels=int(mc), channel_mult=mult, channel_mult_emb=_multiple(source, "embedding width", emb_ch, mc),
        num_blocks=num_blocks, attn_resolutions=[r for r in resolutions if f"enc.{r}x{r}_block0.qkv.weight" in t],
        dropout=float(attr(blocks[0], "dropout", 0.0)) if blocks else 0.0,
        label_dropout=float(attr(unet, "label_dropout", 0.0) or 0.0),
        embedding_type="fourier" if "map_noise.freqs" in t else "positional",
        channel_mult_noise=_multiple(source, "noise-embedding width", noise_ch, mc),
        encoder_type="residual" if "aux_residual" in names else "skip" if "aux_skip" in names else "standard",
        decoder_type="skip" if skip_decoder else "standard", resample_filter=list(_resample_filter(source, t)))


def _check_songunet_attrs(source: str, unet) -> None:
    """What the weights do not show: one-head attention, additive embedding, sqrt(1/2) skips, GroupNorm eps 1e-6
    and groups, the positional embedding's endpoint, fused resampling only on NCSN++'s image path."""
    for path, m in walk(unet, "model."):
        kind = class_of(m)
        if kind == "UNetBlock":
            _expect(source, path, m, "num_heads", lambda v: v in (0, 1), "one attention head")
            _expect(source, path, m, "adaptive_scale", lambda v: not v, "adaptive_scale=False")
            _expect(source, path, m, "skip_scale", lambda v: math.isclose(v, math.sqrt(0.5)), "skip_scale sqrt(1/2)")
        elif kind == "GroupNorm":
            channels = m.state["_parameters"]["weight"].shape[0]
            _expect(source, path, m, "eps", lambda v: math.isclose(v, 1e-6), "eps 1e-6")
            _expect(source, path, m, "num_groups", lambda v, c=channels: v == min(32, c // 4), "min(32, C / 4)")
        elif kind == "PositionalEmbedding":
            _expect(source, path, m, "endpoint", lambda v: v is True, "endpoint=True")
            _expect(source, path, m, "max_positions", lambda v: v == 10000, "max_positions 10000")
        elif kind == "Conv2d":
            fused = "aux_residual" in path
            _expect(source, path, m, "fused_resample", lambda v, f=fused: bool(v) == f, f"fused_resample={fused}")


def _preset(presets: dict[str, dict], cfg: dict, keys: tuple[str, ...] | None = None) -> str | None:
    """The preset that shares cfg's value of each of `keys` (default: all the preset's), else None."""
    def same(a, b):
        return list(a) == list(b) if isinstance(a, list | tuple) and isinstance(b, list | tuple) else a == b
    return next((n for n, p in presets.items() if all(same(cfg.get(k), p[k]) for k in keys or p)), None)


_SONG_ARCH = ("embedding_type", "channel_mult_noise", "encoder_type", "decoder_type", "resample_filter")


def edm_songunet(net, source: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """EDM's EDMPrecond(SongUNet) -> (our model config, our state dict): 'model.<key>' -> 'net.<key>'."""
    from diffscale.models.song_unet import PRESETS

    unet = children(net).get("model")
    if class_of(unet) != "SongUNet":
        raise ConfigError(f"{source}: EDMPrecond's model is a {class_of(unet)}; only SongUNet (DDPM++ / NCSN++) "
                          f"maps onto our networks")
    tensors = module_tensors(unet, source)
    net_cfg = songunet_config(source, tensors, unet)
    _check_songunet_attrs(source, unet)
    label_dim = attr(net, "label_dim", net_cfg["label_dim"])
    if label_dim != net_cfg["label_dim"]:
        raise ConfigError(f"{source}: EDMPrecond label_dim {label_dim}, its SongUNet {net_cfg['label_dim']}")
    net_cfg = dict(type="SongUNet", preset=_preset(PRESETS, net_cfg, _SONG_ARCH), **net_cfg)
    model_cfg = dict(type="EDMPrecond", sigma_data=float(attr(net, "sigma_data", 0.5)), label_dim=label_dim,
                     logvar_channels=0, net=net_cfg)
    return model_cfg, _fit_and_check(source, {f"net.{k}": v for k, v in tensors.items()}, model_cfg)


def _edm2_order(entries: list[tuple[int, str]], decoder: bool) -> dict[str, int]:
    """Index of each EDM2 ModuleDict entry in our ModuleList: encoder levels from the top (down, block0, ...),
    decoder levels from the bottom (in0, in1 or up, block0, ...)."""
    def rank(entry):
        res, rest = entry
        kind = {"in0": -3, "in1": -2, "up": -3, "down": -3}.get(rest)
        return (res if decoder else -res, kind if kind is not None else int(rest.removeprefix("block")))
    names = sorted((e for e in entries if e[1] != "conv"), key=rank)
    return {f"{res}x{res}_{rest}": i for i, (res, rest) in enumerate(names)}


def edm2_key(key: str, enc: dict[str, int], dec: dict[str, int]) -> str:
    """Our EDM2Precond key of an official EDM2 Precond key (module docstring)."""
    if not key.startswith("unet."):
        return key  # logvar_fourier.*, logvar_linear.weight
    head, _, tail = key[len("unet."):].partition(".")
    if head not in ("enc", "dec"):
        return "net." + key[len("unet."):]
    entry, _, param = tail.partition(".")
    if head == "enc" and entry.endswith("_conv"):
        return f"net.conv_in.{param}"
    return f"net.{head}.{(enc if head == 'enc' else dec)[entry]}.{param}"


def edm2_config(source: str, t: dict[str, torch.Tensor], unet) -> dict:
    """EDM2UNet arguments from the official UNet's tensors (keys under 'unet.' stripped) and attributes."""
    enc = _entries(t, "enc")
    res0 = next((r for r, rest in enc if rest == "conv"), None)
    if res0 is None:
        raise ConfigError(f"{source}: not an EDM2 UNet: no input conv 'enc.<R>x<R>_conv'")
    resolutions = sorted({r for r, _ in enc}, reverse=True)
    try:
        widths = [int(t[f"enc.{r}x{r}_block0.conv_res0.weight"].shape[0]) for r in resolutions]
        emb, noise = (int(n) for n in t["emb_noise.weight"].shape)
    except KeyError as exc:
        raise ConfigError(f"{source}: not an EDM2 UNet: no tensor {exc.args[0]}") from None
    channels = math.gcd(*widths, noise, emb)  # any common base builds the same network; presets use the gcd
    blocks = [(p, m) for p, m in walk(unet, "unet.") if class_of(m) == "Block"]
    per_head = {attr(m, "out_channels") // attr(m, "num_heads") for _, m in blocks if attr(m, "num_heads")}
    if len(per_head) != 1 or any(attr(m, "out_channels") % attr(m, "num_heads") for _, m in blocks
                                 if attr(m, "num_heads")):
        raise ConfigError(f"{source}: attention heads of {sorted(per_head)} channels; our EDM2UNet needs one width")
    shared = {}
    for name in ("dropout", "res_balance", "attn_balance", "clip_act"):
        values = {attr(m, name) for _, m in blocks}
        if len(values) != 1:
            raise ConfigError(f"{source}: Blocks differ in {name} ({sorted(map(str, values))}); ours share one")
        shared[name] = values.pop()
    for path, m in blocks:
        _expect(source, path, m, "resample_filter", lambda v: list(v) == [1, 1], "the [1, 1] filter")
    return dict(
        img_resolution=res0, img_channels=int(t[f"enc.{res0}x{res0}_conv.weight"].shape[1]) - 1,
        label_dim=int(t["emb_label.weight"].shape[1]) if "emb_label.weight" in t else 0, channels=channels,
        channel_mult=[w // channels for w in widths], num_blocks=sum(r == res0 and s.startswith("block")
                                                                      for r, s in enc),
        attn_resolutions=[r for r in resolutions if f"enc.{r}x{r}_block0.attn_qkv.weight" in t],
        channels_per_head=per_head.pop(), channel_mult_noise=None if noise == widths[0] else noise // channels,
        channel_mult_emb=None if emb == max(widths) else emb // channels,
        label_balance=float(attr(unet, "label_balance", 0.5)), concat_balance=float(attr(unet, "concat_balance", 0.5)),
        **shared)


def edm2_unet(net, source: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """EDM2's Precond(UNet) -> (our model config, our state dict), keys by `edm2_key`."""
    from diffscale.models.edm2_unet import PRESETS

    unet = children(net)["unet"]
    if class_of(unet) != "UNet":
        raise ConfigError(f"{source}: EDM2 Precond's unet is a {class_of(unet)}; expected the EDM2 UNet")
    tensors = module_tensors(net, source)
    inner = {k[len("unet."):]: v for k, v in tensors.items() if k.startswith("unet.")}
    net_cfg = edm2_config(source, inner, unet)
    if "logvar_linear.weight" not in tensors:
        raise ConfigError(f"{source}: EDM2 Precond without logvar_linear")
    model_cfg = dict(type="EDM2Precond", sigma_data=float(attr(net, "sigma_data", 0.5)),
                     logvar_channels=int(tensors["logvar_linear.weight"].shape[1]),
                     net=dict(type="EDM2UNet", preset=_preset(PRESETS, net_cfg), **net_cfg))
    enc, dec = _edm2_order(_entries(inner, "enc"), False), _edm2_order(_entries(inner, "dec"), True)
    try:
        mapped = {edm2_key(k, enc, dec): v for k, v in tensors.items()}
    except KeyError as exc:
        raise ConfigError(f"{source}: unexpected EDM2 entry {exc.args[0]}") from None
    if len(mapped) != len(tensors):
        raise ConfigError(f"{source}: two EDM2 tensors map onto one of ours")
    return model_cfg, _fit_and_check(source, mapped, model_cfg)


def model_from_pickle(obj, source: str, entry: str = "ema") -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(model config dict, our state dict, info) of the network `obj[entry]` of an unpickled EDM / EDM2 file."""
    if not isinstance(obj, dict) or entry not in obj:
        found = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ConfigError(f"{source}: no network entry '{entry}' (the pickle holds {found})")
    net = obj[entry]
    name = class_of(net)
    if name == "EDMPrecond":
        cfg, state = edm_songunet(net, source)
        fmt = "edm"
    elif name == "Precond" and "unet" in children(net):
        cfg, state = edm2_unet(net, source)
        fmt = "edm2"
    else:
        raise ConfigError(f"{source}: '{entry}' is a {name}; expected EDM's EDMPrecond (SongUNet, the published "
                          f"config-F pickles) or EDM2's Precond")
    info = {"format": fmt, "class_name": name, "entry": entry,
            "module_src_sha256": getattr(net, "module_src_sha256", None)}
    encoder = obj.get("encoder")
    if fmt == "edm2" and encoder is not None:
        info["encoder"] = {"class_name": class_of(encoder), **{
            k: (v.tolist() if hasattr(v, "tolist") else v) for k in ("vae_name", "scale", "bias")
            if (v := attr(encoder, k)) is not None}}
    return cfg, state, info


def import_pickle(path: str | Path, entry: str = "ema") -> tuple[dict, dict[str, torch.Tensor], dict]:
    """Read an EDM / EDM2 pickle: (model config, our state dict in float32, info with the file's name and SHA-256)."""
    obj, sha = load_official_pickle(path)
    cfg, state, info = model_from_pickle(obj, str(path), entry)
    return cfg, state, dict(info, file=Path(path).name, sha256=sha)


def write_export(out: str | Path, model_cfg: dict, state: dict[str, torch.Tensor], info: dict,
                 ema_name: str | None = None) -> None:
    """Write an export file (engine/export.py's layout: part 'model'), with the model config and source in the
    metadata. `ema_name`: also store the weights as that average (for configs whose test_cfg.ema names one)."""
    from diffscale.engine.export import save_export

    tensors = {f"model.{k}": v.float().clone() for k, v in state.items()}
    if ema_name:
        tensors.update({f"ema.{ema_name}.{k}": v.float().clone() for k, v in state.items()})
    meta = {"parts": ["model"], "averages": [ema_name] if ema_name else [], "step": 0, "nimg": None,
            "strategy": f"import:{info['format']}", "model_config": model_cfg,
            "source": {k: v for k, v in info.items() if k != "encoder"}}
    if "encoder" in info:
        meta["encoder"] = info["encoder"]
    save_export(out, tensors, meta)  # renamed when complete: a killed import leaves no half export


def build_from_export(path: str | Path, ema: str | None = None) -> torch.nn.Module:
    """The network an export's 'model_config' describes, its weights loaded strictly (eval mode)."""
    from safetensors import safe_open

    from diffscale.engine.reference import load_weights
    from diffscale.registry import MODELS, build

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "model_config" not in meta:
        raise ConfigError(f"{path}: no model_config in the export's metadata (not written by import_checkpoint)")
    model = build(MODELS, json.loads(meta["model_config"]), "model")
    model.load_state_dict(load_weights(Path(path), ema), strict=True)
    return model.eval()
