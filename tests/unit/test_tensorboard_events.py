"""What LoggerHook and ToyPlotHook write to WORK_DIR/tensorboard, read back with TensorBoard's own reader:
one scalar point per logged step (every log_interval steps and at the last), finite values, the scheduled
learning rate, losses that agree with train.log, and the sample plot as an image and as a PNG file."""

import math
import re
import runpy
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffscale.engine.lr_schedules import InvSqrtLR
from tests.helpers import SMALL, train

pytestmark = pytest.mark.slow

SCALARS = ("train/loss", "train/grad_norm", "train/lr", "train/img_per_s", "train/peak_memory_mib",
           "train/skipped_steps")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LOG_LINE = re.compile(r"INFO step (\d+)/(\d+)  loss (\S+)  grad_norm (\S+)  lr (\S+)")


def read_events(work_dir: Path) -> EventAccumulator:
    events = sorted((work_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1, f"expected one event file, found {events}"
    acc = EventAccumulator(str(work_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_scalars_one_point_per_logged_step(tmp_path):
    work_dir = tmp_path / "run"
    train(SMALL, work_dir, options=("train_cfg.log_interval=3",))
    acc = read_events(work_dir)
    assert set(SCALARS) <= set(acc.Tags()["scalars"]), acc.Tags()["scalars"]

    logged = [3, 6, 9, 10]  # every 3 steps of 10, and the last
    for tag in SCALARS:
        points = acc.Scalars(tag)
        assert [p.step for p in points] == logged, (tag, [p.step for p in points])
        assert all(math.isfinite(p.value) for p in points), (tag, [p.value for p in points])
    assert all(p.value == 0.0 for p in acc.Scalars("train/skipped_steps"))
    assert all(p.value > 0 for p in acc.Scalars("train/img_per_s"))

    # The learning rate of the step just taken, from the config the trainer dumped.
    cfg = runpy.run_path(str(work_dir / "config.py"))
    assert cfg["train_cfg"]["max_iters"] == 10 and cfg["train_cfg"]["log_interval"] == 3
    sched = dict(cfg["lr_schedule"])
    assert sched.pop("type") == "InvSqrtLR", sched
    schedule = InvSqrtLR(**sched)
    base_lr = cfg["optimizer"]["lr"]
    assert base_lr == 3e-3
    for p in acc.Scalars("train/lr"):
        expected = base_lr * schedule.factor(p.step - 1)  # step p.step ran with the factor of p.step - 1
        assert p.value == pytest.approx(expected, rel=1e-6), (p.step, p.value, expected)

    # train.log prints the same numbers with %.5g.
    log_text = (work_dir / "train.log").read_text()
    printed = {int(m[1]): (int(m[2]), m[3], m[4], m[5]) for m in LOG_LINE.finditer(log_text)}
    assert sorted(printed) == logged, printed
    for tag, column in (("train/loss", 1), ("train/grad_norm", 2), ("train/lr", 3)):
        for p in acc.Scalars(tag):
            assert printed[p.step][0] == 10
            text = printed[p.step][column]
            assert f"{p.value:.5g}" == text, (tag, p.step, p.value, text)
            assert p.value == pytest.approx(float(text), rel=1e-4, abs=0), (tag, p.step, p.value, text)


def test_toy_plot_image(tmp_path):
    from PIL import Image

    work_dir = tmp_path / "run"
    hook = ("hooks=[{'type':'ToyPlotHook','num_samples':256,'ema':None,"
            "'sampler':{'type':'EDMHeunSampler','num_steps':4,'sigma_max':5.0}}]")
    train(SMALL, work_dir, options=(hook,))
    acc = read_events(work_dir)
    assert "samples/raw" in acc.Tags()["images"], acc.Tags()
    images = acc.Images("samples/raw")
    assert [im.step for im in images] == [10]  # interval 0: plotted once, at the end
    assert images[0].encoded_image_string.startswith(PNG_MAGIC)
    assert images[0].width > 100 and images[0].height > 100, (images[0].width, images[0].height)
    # The logger still logs every 2 steps next to the plot hook.
    assert [p.step for p in acc.Scalars("train/loss")] == [2, 4, 6, 8, 10]

    pngs = sorted((work_dir / "samples").glob("*.png"))
    assert [p.name for p in pngs] == ["toy_raw_iter_0000010.png"], pngs
    data = pngs[0].read_bytes()
    assert len(data) > 0 and data.startswith(PNG_MAGIC)
    with Image.open(pngs[0]) as im:
        im.verify()
    with Image.open(pngs[0]) as im:
        assert im.format == "PNG"
        width, height = im.size
        assert width > 100 and height > 100, im.size
        im.load()
    assert (width, height) == (images[0].width, images[0].height)
