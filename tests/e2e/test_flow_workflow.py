"""The documented latent-flow workflow on CPU, shrunk: an image folder encoded by tools/encode_latents.py (the SD-VAE
architecture with random weights, 64x64 images -> 4x8x8 latents), configs/flow/dit_seed_imagenet256.py trained
at FlowDiT's tiny preset with the frozen VAE decoder part (a guided sample grid decoded through it during
training), then tools/generate.py (decoded PNGs) and tools/test.py (FID on random Inception weights)."""

import json
import sys

import numpy as np
from PIL import Image

from tests.helpers import ROOT, last_checkpoint, run

CONFIG = ROOT / "configs/flow/dit_seed_imagenet256.py"


def test_encode_train_generate_and_test(tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    for k in range(12):  # 4 classes, 3 images each, not square: the ADM centre crop makes them 64x64
        folder = images / f"class_{k % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    latents = tmp_path / "latents"
    proc = run([sys.executable, str(ROOT / "tools/encode_latents.py"), "--source", "imagefolder", "--input",
                str(images), "--output", str(latents), "--random-vae", "--resolution", "64", "--batch", "4"])
    meta = json.loads((latents / "diffscale.json").read_text())
    assert meta["num_samples"] == 12 and meta["latent_shape"] == [4, 8, 8], proc.stdout

    # The recipe with only the sizes shrunk: the tiny preset (8x8x4 latents), the VAE untrained, 4 iterations.
    config = tmp_path / "flow_tiny.py"
    config.write_text(
        f"_base_ = [{str(CONFIG)!r}]\n"
        "parts = dict(model=dict(model=dict(preset='tiny')), vae=dict(model=dict(path=None, random_init=True)))\n"
        f"data = dict(train=dict(path={str(latents)!r}, num_workers=0))\n"
        "train_cfg = dict(max_iters=4, batch_size=4, batch_gpu=2, precision='fp32', log_interval=1)\n"
        "checkpoint = dict(interval=4)\n"
        "sampler = dict(type='FlowEulerSampler', num_steps=4, guidance=4.0)\n"
        "hooks = [dict(type='EMAHook', stds=(0.050,), decays=(0.99,), interval=2),\n"
        "         dict(type='SampleHook', interval=4, num=4, ema='decay_0.99', sampler=sampler, guide='cfg')]\n"
        "test_cfg = dict(num=8, batch_gpu=4, sampler=sampler, ref=None)\n"
        "evaluators = [dict(type='FID', random_weights=True)]\n")
    work = tmp_path / "work"
    out = run([sys.executable, str(ROOT / "tools/train.py"), str(config), "--work-dir", str(work)])
    assert "FlowDiT parameters" in out.stderr and "SDVAE parameters" in out.stderr and "(frozen)" in out.stderr
    with Image.open(work / "samples" / "grid_decay_0.99_iter_0000004.png") as grid:  # decoded: 64x64 images
        assert min(grid.size) >= 64
    assert (last_checkpoint(work) / "model.pt").is_file()

    gen = tmp_path / "generated"
    run([sys.executable, str(ROOT / "tools/generate.py"), str(config), str(work), "--out", str(gen), "--num", "4"])
    pngs = sorted(gen.glob("*.png"))
    with Image.open(next(p for p in pngs if p.name != "grid.png")) as image:
        assert image.size == (64, 64) and image.mode == "RGB"  # latents decoded through the VAE part

    ref = tmp_path / "ref.npz"
    run([sys.executable, str(ROOT / "tools/compute_ref_stats.py"), "--data", str(images), "--out", str(ref),
         "--config", str(config), "--evaluators", "FID"])
    proc = run([sys.executable, str(ROOT / "tools/test.py"), str(config), str(work), "--ref", str(ref),
                "--work-dir", str(tmp_path / "test")])
    values = json.loads((tmp_path / "test" / "metrics.json").read_text())
    values = values.get("metrics", values)
    assert np.isfinite(values["fid"]) and values["fid"] > 0 and "fid" in proc.stdout
