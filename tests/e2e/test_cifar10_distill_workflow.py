"""The documented CIFAR-10 distillation workflow on CPU, shrunk: CIFAR-10's python batches converted by the tool;
the EDM teacher trained (configs/edm/edm_cifar10_ddpmpp.py: validation loss, an EMA sample grid); consistency
distillation from that teacher (configs/consistency/cd_cifar10_ddpmpp.py, LPIPS with random weights, a two-step
grid); DMD2 with the GAN head through tools/dist_train.sh (configs/dmd2/dmd2_cifar10_gan.py: FID of the one-step
generator during training, the best checkpoint kept); DMD2 with the generator started from the consistency run
(configs/dmd2/dmd2_cifar10_cm_init.py); then tools/test.py on the generator. Every run is the real config with the
networks shrunk (a tiny DDPM++ SongUNet at 32 px) in an override file and the budgets cut by --cfg-options; FID
uses Inception with random weights (no download here)."""

import json
import sys

import numpy as np
import torch
from PIL import Image

from tests.data_helpers import make_cifar10
from tests.helpers import ROOT, export, last_checkpoint, run, train

CONFIGS = ROOT / "configs"
# DDPM++ at 32 px with widths 16 / 32, one block per level, attention at 16 px: the bottleneck (the GAN head's
# input) is 32 x 16 x 16. augment_dim=0: the teacher is trained here, without EDM's augmentation labels.
TINY_NET = "dict(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(16,), augment_dim=0)"
FID = "evaluators = [dict(type='FID', random_weights=True)]\n"
BATCH = ("train_cfg.batch_size=8", "train_cfg.batch_gpu=4", "train_cfg.log_interval=1", "data.train.num_workers=0")


def override(path, base: str, body: str) -> str:
    path.write_text(f"_base_ = [{str(CONFIGS / base)!r}]\nnet = {TINY_NET}\n{body}")
    return str(path)


def grid(work, name: str) -> tuple[int, int]:
    with Image.open(work / "samples" / name) as image:
        return image.size


def test_teacher_cd_dmd2_then_test(tmp_path):
    folder, _, _ = make_cifar10(tmp_path / "raw", per_batch=8, test=16)
    proc = run([sys.executable, str(ROOT / "tools/convert_dataset.py"), "--source", "cifar10", "--input", str(folder),
                "--output", str(tmp_path / "cifar10"), "--split", "all"])
    assert proc.stdout.count("read back and checked") == 2
    train_data, val_data = tmp_path / "cifar10/train", tmp_path / "cifar10/val"
    data = f"data = dict(train=dict(path={str(train_data)!r}), val=dict(path={str(val_data)!r}))\n"

    # 1. The EDM teacher: 2 steps, the held-out loss and the EMA's Heun grid (shape from SongUNet itself).
    edm = tmp_path / "edm"
    train(override(tmp_path / "edm.py", "edm/edm_cifar10_ddpmpp.py", f"model = dict(net=net)\n{data}"), edm, options=(
        *BATCH, "train_cfg.max_iters=2", "lr_schedule.warmup_iters=0", "checkpoint.interval=2",
        "hooks.1.interval=2", "hooks.1.num_batches=1", "hooks.2.num=10", "hooks.2.sampler.num_steps=2"))
    assert grid(edm, "grid_decay_0.99929_iter_0000002.png")[0] == 8 * 33 + 1  # 8 columns of 32 px + padding
    teacher = f"teacher_run = dict(checkpoint={str(edm)!r}, ema='decay_0.99929', part='model')\n"

    # 2. Consistency distillation from it: LPIPS (random weights, 32 px), the two-step sampler's grid.
    cd = tmp_path / "cd"
    train(override(tmp_path / "cd.py", "consistency/cd_cifar10_ddpmpp.py", teacher + data + (
        "parts = dict(model=dict(model=dict(net=net), init=teacher_run), teacher=dict(model=dict(net=net), "
        "init=teacher_run))\nobjective = dict(lpips_weights=None, lpips_random_init=True, lpips_resize=32)\n")),
        cd, options=(*BATCH, "train_cfg.max_iters=2", "checkpoint.interval=2", "hooks.1.num=10",
                     "hooks.1.sampler.sigmas=[80.0,0.5853481231945422]"))
    assert grid(cd, "grid_decay_0.9999_iter_0000002.png")[0] == 8 * 33 + 1

    # 3. DMD2 with the GAN head on the trained teacher, launched as the README does: FID during training against
    # the test split's statistics, the best checkpoint kept, the generator's grid.
    ref = tmp_path / "fid_ref_test.npz"
    gan_config = override(tmp_path / "dmd2_gan.py", "dmd2/dmd2_cifar10_gan_trained_teacher.py", FID + (
        f"data = dict(train=dict(path={str(train_data)!r}))\nstart = dict(checkpoint={str(edm)!r})\n"
        "parts = dict(generator=dict(model=dict(net=net), init=start),\n"
        "             fake_score=dict(model=dict(score=dict(net=net)), init=start),\n"
        "             real_score=dict(model=dict(net=net), init=start))\n"
        f"test_cfg = dict(ref={str(ref)!r}, num=8, batch_gpu=4)\n"))
    run([sys.executable, str(ROOT / "tools/compute_ref_stats.py"), "--data", str(val_data), "--out", str(ref),
         "--config", gan_config])
    dmd2 = tmp_path / "dmd2"
    run(["bash", str(ROOT / "tools/dist_train.sh"), gan_config, "1", "--work-dir", str(dmd2), "--cfg-options",
         *BATCH, "train_cfg.max_iters=6", "checkpoint.interval=3", "hooks.0.interval=3", "hooks.0.num=8",
         "hooks.1.interval=3", "hooks.1.num=10"])
    best = json.loads((dmd2 / "best" / "best.json").read_text())
    assert best["metric"] == "fid" and np.isfinite(best["value"]) and best["step"] in (3, 6)
    assert grid(dmd2, "grid_raw_iter_0000006.png")[0] == 8 * 33 + 1
    state = torch.load(last_checkpoint(dmd2) / "trainer.pt", weights_only=True)
    assert state["step"] == 6

    # 4. DMD2 with the generator from the consistency run's average (a ConsistencyPrecond): one iteration, whose
    # generator step at lr 2e-6 / 500 (warm-up) leaves it within 1e-6 of that average.
    cm = tmp_path / "dmd2_cm"
    train(override(tmp_path / "dmd2_cm.py", "dmd2/dmd2_cifar10_cm_init.py", teacher + (
        f"data = dict(train=dict(path={str(train_data)!r}))\nhooks = []\n"
        f"parts = dict(generator=dict(model=dict(net=net), init=dict(checkpoint={str(cd)!r})),\n"
        "             fake_score=dict(model=dict(net=net), init=teacher_run),\n"
        "             real_score=dict(model=dict(net=net), init=teacher_run))\n")),
        cm, options=(*BATCH, "train_cfg.max_iters=1", "checkpoint.interval=1"))
    generator, cd_ema = export(last_checkpoint(cm)), export(last_checkpoint(cd))
    start = {k[len("generator."):]: v for k, v in generator.items() if k.startswith("generator.")}
    prefix = "ema.model.decay_0.9999."
    average = {k[len(prefix):]: v for k, v in cd_ema.items() if k.startswith(prefix)}
    assert set(start) == set(average)
    assert max((start[k] - average[k]).abs().max().item() for k in start) < 1e-6

    # 5. tools/test.py on the GAN run's generator: one-step samples, FID against the test split.
    out = tmp_path / "test"
    proc = run([sys.executable, str(ROOT / "tools/test.py"), gan_config, str(dmd2), "--work-dir", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    fid = metrics.get("metrics", metrics)["fid"]
    assert np.isfinite(fid) and fid > 0 and "fid" in proc.stdout
