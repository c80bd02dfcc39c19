"""The documented DDPM workflow on CPU, shrunk through --cfg-options only: downsampled-ImageNet pickles converted
by the tool, configs/ddpm/unet_imagenet64_res_res_atn.py trained (the seed's block U-Net at its tiny preset,
learned variance, label dropout, importance-sampled t), a sample grid written during training, then
tools/test.py with classifier-free guidance (FID on random Inception weights, NLL in bits/dim)."""

import json
import sys

import numpy as np
import torch
from PIL import Image

from tests.data_helpers import write_imagenet64_pickle
from tests.helpers import ROOT, last_checkpoint, run, train

CONFIG = str(ROOT / "configs/ddpm/unet_imagenet64_res_res_atn.py")
T = 20  # timesteps of the shrunk process (every place that reads the diffusion gets it)


def test_convert_train_sample_and_test(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, n in (("train_data_batch_1", 12), ("train_data_batch_2", 12), ("val_data", 8)):
        write_imagenet64_pickle(raw / name, rng.integers(0, 256, (n, 64 * 64 * 3), dtype=np.uint8),
                                rng.integers(1, 11, n))  # 10 classes (1-based in the files)
    proc = run([sys.executable, str(ROOT / "tools/convert_dataset.py"), "--source", "imagenet64", "--input", str(raw),
                "--output", str(tmp_path / "mds"), "--split", "all", "--resolution", "16"])
    assert proc.stdout.count("read back and checked") == 2
    diffusion = [f"num_timesteps={T}"]
    options = (
        "model.preset=tiny",  # 16x16, every block type, 10 classes
        *(f"objective.{o}" for o in diffusion), "objective.importance_sampling=True", "objective.history_per_term=1",
        "train_cfg.max_iters=4", "train_cfg.batch_size=8", "train_cfg.batch_gpu=4", "train_cfg.log_interval=1",
        "checkpoint.interval=2", f"data.train.path={tmp_path / 'mds/train'}", f"data.val.path={tmp_path / 'mds/val'}",
        "data.train.num_workers=0", "hooks.0.interval=2", "hooks.0.num_batches=1",
        "hooks.1.interval=4", "hooks.1.num=4", *(f"hooks.1.sampler.{o}" for o in diffusion),
        "hooks.1.sampler.num_steps=4",
    )
    work = tmp_path / "work"
    out = train(CONFIG, work, options=options)
    assert "DDPMUNet parameters" in out.stderr
    with Image.open(work / "samples" / "grid_raw_iter_0000004.png") as grid:  # SampleHook, guided by the null class
        assert min(grid.size) >= 16
    count = torch.load(last_checkpoint(work) / "trainer.pt", weights_only=True)["objective"]["resampler"]["count"]
    assert count.shape == (T,) and int(count.sum()) > 8 and int(count.max()) == 1  # the t history is saved

    # The config's evaluators with Inception's random weights (no download here) and a small held-out set.
    test_config = tmp_path / "test_config.py"
    test_config.write_text(
        f"_base_ = [{CONFIG!r}]\nmodel = dict(preset='tiny')\n"
        f"evaluators = [dict(type='FID', random_weights=True), dict(type='NLL', data=dict(type='MDSImageStream', "
        f"path={str(tmp_path / 'mds/val')!r}, num_workers=0), num_examples=8, batch_gpu=4, num_timesteps={T})]\n")
    ref = tmp_path / "ref.npz"
    run([sys.executable, str(ROOT / "tools/compute_ref_stats.py"), "--data", str(tmp_path / "mds/train"), "--out",
         str(ref), "--config", str(test_config), "--evaluators", "FID"])
    test_options = [*(f"test_cfg.sampler.{o}" for o in diffusion), "test_cfg.sampler.num_steps=4", "test_cfg.num=8",
                    "test_cfg.batch_gpu=4", f"test_cfg.ref={ref}"]  # as --ref would
    proc = run([sys.executable, str(ROOT / "tools/test.py"), str(test_config), str(work), "--work-dir",
                str(tmp_path / "test"), "--cfg-options", *test_options])
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    values = metrics.get("metrics", metrics)
    assert np.isfinite(values["fid"]) and values["fid"] > 0
    assert 0 < values["nll_bpd"] < 100 and np.isfinite(values["nll_prior_bpd"])
    assert "nll_bpd" in proc.stdout
