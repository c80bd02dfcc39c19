"""Importing NVlabs EDM / EDM2 pickles (engine/import_official.py, tools/import_checkpoint.py) without running them.

The pickles here are written in NVlabs' persistence format by a miniature `torch_utils.persistence` whose
reconstruct function execs the embedded module source, as the real one does; that source writes a marker file
and raises. The importer must read every tensor without ever reaching it."""

import collections
import json
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from diffscale.diffusion.edm import EDM2Precond, EDMPrecond
from diffscale.engine.import_official import build_from_export, edm2_key, import_pickle, write_export
from diffscale.errors import CheckpointError, ConfigError
from diffscale.models.edm2_unet import Block, EDM2UNet
from diffscale.models.song_unet import Conv, FourierEmbedding, PositionalEmbedding, SongBlock, SongUNet

pytestmark = pytest.mark.usefixtures("one_thread")

SONG = dict(img_resolution=16, label_dim=10, augment_dim=9, model_channels=16, channel_mult=(1, 2), num_blocks=1,
            attn_resolutions=(8,))
EDM2 = dict(img_channels=3, img_resolution=16, channels=16, channel_mult=(1, 2), num_blocks=1,
            attn_resolutions=(8,), channels_per_head=16, label_dim=10)
# Our layer -> the official class name and the attributes the official layer records that ours does not.
OFFICIAL = {SongUNet: "SongUNet", SongBlock: "UNetBlock", Conv: "Conv2d", nn.GroupNorm: "GroupNorm",
            nn.Linear: "Linear", PositionalEmbedding: "PositionalEmbedding", FourierEmbedding: "FourierEmbedding",
            EDM2UNet: "UNet", Block: "Block"}


def official_attrs(m: nn.Module) -> dict:
    if isinstance(m, SongBlock):
        return dict(num_heads=int(m.attention), adaptive_scale=False, skip_scale=np.sqrt(0.5))  # a numpy scalar
    if isinstance(m, nn.GroupNorm):
        return dict(num_groups=m.num_groups, eps=m.eps)
    if isinstance(m, Conv):
        return dict(fused_resample=m.fused)
    if isinstance(m, PositionalEmbedding):
        return dict(endpoint=True)
    return dict(resample_filter=[1, 1]) if isinstance(m, Block) else {}


@pytest.fixture
def nvlabs(monkeypatch, tmp_path):
    """The official modules, in miniature: persistence (its reconstruct execs module_src) and dnnlib.EasyDict."""
    persistence, util = types.ModuleType("torch_utils.persistence"), types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):
        exec(meta["module_src"], {})  # what NVlabs' loader does first
        raise AssertionError("unreachable: module_src raises")

    _reconstruct_persistent_obj.__module__, _reconstruct_persistent_obj.__qualname__ = (
        "torch_utils.persistence", "_reconstruct_persistent_obj")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util.EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    for name, mod in (("torch_utils", types.ModuleType("torch_utils")), ("torch_utils.persistence", persistence),
                      ("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.util", util)):
        monkeypatch.setitem(sys.modules, name, mod)
    marker = tmp_path / "module_src_ran"
    src = f"open({str(marker)!r}, 'w').write('ran')\nraise RuntimeError('module_src executed')\n"
    return types.SimpleNamespace(persistence=persistence, util=util, marker=marker, src=src, tmp=tmp_path)


class Persisted:
    """Pickles as torch_utils.persistence pickles a persistent object: _reconstruct_persistent_obj(meta)."""

    def __init__(self, env, class_name: str, state: dict):
        self.env, self.class_name, self.state = env, class_name, state

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.env.src, class_name=self.class_name, state=self.state)
        return self.env.persistence._reconstruct_persistent_obj, (meta,)


def persist(env, m: nn.Module, modules: dict | None = None, fn=lambda name, t: t, path: str = ""):
    """A module as the official code pickles it: persistent layers, torch ModuleDicts as themselves; `fn(key, t)`
    gives the tensor stored for each parameter / buffer."""
    kids = collections.OrderedDict((k, persist(env, c, fn=fn, path=f"{path}{k}.") if c is not None else None)
                                   for k, c in (modules if modules is not None else m._modules).items())
    if isinstance(m, nn.ModuleDict | nn.ModuleList):
        box = nn.ModuleDict()
        box._modules = kids
        return box
    state = {k: v for k, v in m.__dict__.items() if not k.startswith("_")} | official_attrs(m)
    tensors = [collections.OrderedDict((k, fn(path + k, v) if v is not None else None) for k, v in group.items())
               for group in (m._parameters, m._buffers)]
    state.update(_parameters=tensors[0], _buffers=tensors[1], _non_persistent_buffers_set=set(), _modules=kids)
    return Persisted(env, OFFICIAL.get(type(m), type(m).__name__), state)


def edm_pickle(env, net: SongUNet) -> dict:
    top = Persisted(env, "EDMPrecond", dict(
        training=False, _parameters={}, _buffers={}, _modules={"model": persist(env, net)}, sigma_data=0.5,
        label_dim=10, _init_kwargs=dict(model_type="SongUNet", init_attn=dict(init_weight=np.sqrt(0.2)))))
    return dict(ema=top, loss_fn=Persisted(env, "EDMLoss", dict(P_mean=-1.2)),
                dataset_kwargs=env.util.EasyDict(path="cifar10.zip", use_labels=True))


def edm2_names(cfg: dict) -> tuple[list[str], list[str]]:
    """EDM2's ModuleDict entry names (its Fig. 21 layout): enc without the input conv, dec."""
    res = [cfg["img_resolution"] >> lv for lv in range(len(cfg["channel_mult"]))]
    enc = [n for lv, r in enumerate(res) for n in ([f"{r}x{r}_down"] if lv else [])
           + [f"{r}x{r}_block{i}" for i in range(cfg["num_blocks"])]]
    dec = [n for lv, r in reversed(list(enumerate(res))) for n in (
        [f"{r}x{r}_in0", f"{r}x{r}_in1"] if lv == len(res) - 1 else [f"{r}x{r}_up"])
        + [f"{r}x{r}_block{i}" for i in range(cfg["num_blocks"] + 1)]]
    return enc, dec


def edm2_pickle(env, model: EDM2Precond) -> dict:
    """The EDM2 layout: 'unet' with enc/dec ModuleDicts (the input conv inside enc), 0-d gains, fp16 weights."""
    unet = model.net
    enc_names, dec_names = edm2_names(unet.config)
    r = unet.img_resolution
    enc = dict([(f"{r}x{r}_conv", unet.conv_in)] + list(zip(enc_names, unet.enc, strict=True)))
    modules = dict(emb_fourier=unet.emb_fourier, emb_noise=unet.emb_noise, emb_label=unet.emb_label,
                   enc=nn.ModuleDict(enc), dec=nn.ModuleDict(dict(zip(dec_names, unet.dec, strict=True))),
                   out_conv=unet.out_conv)

    def fp16(key, t):  # EDM2's snapshots: fp16, gains 0-d
        t = nn.Parameter(t.detach().half()) if isinstance(t, nn.Parameter) else t.half()
        return t.reshape(()) if key.endswith("_gain") else t

    top = Persisted(env, "Precond", dict(
        _parameters={}, _buffers={}, sigma_data=0.5, label_dim=10,
        _modules=dict(unet=persist(env, unet, modules=modules, fn=fp16), **{
            k: persist(env, getattr(model, k), fn=fp16) for k in ("logvar_fourier", "logvar_linear")})))
    enc_obj = Persisted(env, "StabilityVAEEncoder", dict(vae_name="sd-vae", scale=np.float32([0.5, 0.25, 1, 2]),
                                                         bias=np.float32([0, 1, 2, 3]), _vae=None))
    return env.util.EasyDict(encoder=enc_obj, loss_fn=Persisted(env, "EDM2Loss", {}), ema=top)


def write_pickle(env, data, name: str):
    path = env.tmp / name
    path.write_bytes(pickle.dumps(data, protocol=4))
    return path


def song_model(preset: str) -> EDMPrecond:
    torch.manual_seed(0)
    model = EDMPrecond(SongUNet(preset, **SONG), label_dim=10, logvar_channels=0).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # off EDM's near-zero init, so every layer shows in the output
    return model


def edm2_model() -> EDM2Precond:
    torch.manual_seed(0)
    model = EDM2Precond(EDM2UNet(**EDM2)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.full_like(p, 0.4) if n.endswith("_gain") else p * (1 + 0.2 * torch.rand_like(p)))
    return model


@pytest.mark.parametrize("kind", ["ddpmpp", "ncsnpp", "edm2"])
def test_import_reads_every_tensor_and_runs_no_code(nvlabs, kind):
    model = edm2_model() if kind == "edm2" else song_model(kind)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    if kind == "edm2":  # the pickle holds fp16 weights, as EDM2's snapshots do
        expected = {k: v.half().float() for k, v in expected.items()}
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.2, 5.0])
    labels = torch.tensor([3, 8])
    with torch.no_grad():
        model.load_state_dict(expected)
        before = model(x, sigma, labels)
        data = edm2_pickle(nvlabs, model) if kind == "edm2" else edm_pickle(nvlabs, model.net)
    path = write_pickle(nvlabs, data, f"{kind}.pkl")
    with pytest.raises(RuntimeError, match="module_src executed"):  # the file really is armed: pickle.load runs it
        pickle.loads(path.read_bytes())
    nvlabs.marker.unlink()

    cfg, state, info = import_pickle(path)
    assert not nvlabs.marker.exists()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], v) for k, v in expected.items())
    assert info["sha256"] and info["format"] == ("edm2" if kind == "edm2" else "edm")
    assert cfg["net"]["preset"] == {"ddpmpp": "ddpmpp", "ncsnpp": "ncsnpp", "edm2": None}[kind]

    out = nvlabs.tmp / f"{kind}.safetensors"  # export -> the network built from it: the same function
    write_export(out, cfg, state, info, ema_name="pf_0.100")
    for ema in (None, "pf_0.100"):
        with torch.no_grad():
            assert torch.equal(build_from_export(out, ema)(x, sigma, labels), before)
    if kind == "edm2":
        from safetensors import safe_open

        with safe_open(str(out), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in f.metadata().items()}
        assert meta["encoder"]["scale"] == [0.5, 0.25, 1, 2] and meta["model_config"] == cfg
        assert meta["parts"] == ["model"] and meta["source"]["file"] == "edm2.pkl"


def test_edm2_key_names():
    enc, dec = {"16x16_block0": 0, "8x8_down": 1}, {"8x8_in0": 0, "16x16_up": 3}
    assert edm2_key("unet.enc.16x16_conv.weight", enc, dec) == "net.conv_in.weight"
    assert edm2_key("unet.enc.8x8_down.emb_gain", enc, dec) == "net.enc.1.emb_gain"
    assert edm2_key("unet.dec.16x16_up.conv_res0.weight", enc, dec) == "net.dec.3.conv_res0.weight"
    assert edm2_key("unet.out_gain", enc, dec) == "net.out_gain"
    assert edm2_key("logvar_linear.weight", enc, dec) == "logvar_linear.weight"


class Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize(("func", "name"), [(os.system, f"{os.system.__module__}.system"), (exec, "builtins.exec")])
def test_forbidden_global_is_refused(nvlabs, func, name):
    path = write_pickle(nvlabs, {"ema": Evil(func, f"open({str(nvlabs.marker)!r}, 'w')")}, "evil.pkl")
    with pytest.raises(CheckpointError) as exc:
        import_pickle(path)
    message = str(exc.value)
    assert "\n" not in message and str(path) in message and f"global {name}" in message
    assert not nvlabs.marker.exists()


def test_mismatches_are_one_line_config_errors(nvlabs, capsys):
    model = song_model("ddpmpp")
    data = edm_pickle(nvlabs, model.net)
    data["ema"].state["_modules"]["model"].state["_modules"]["dec"]._modules["16x16_aux_conv"].state[
        "_parameters"]["weight"] = torch.zeros(3, 16, 1, 1)
    with pytest.raises(ConfigError, match=r"dec\.16x16_aux_conv\.weight: shape \[3, 16, 1, 1\] in the pickle"):
        import_pickle(write_pickle(nvlabs, data, "bad.pkl"))
    data["ema"].class_name = "VPPrecond"
    from tools.import_checkpoint import main

    assert main([str(write_pickle(nvlabs, data, "vp.pkl")), str(nvlabs.tmp / "vp.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "vp.pkl" in err and "is a VPPrecond" in err and "\n" not in err and not nvlabs.marker.exists()
