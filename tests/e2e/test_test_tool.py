"""tools/test.py and the EvalHook end to end, on 1 and 2 processes (gloo): the toy trained on 2 ranks with an
EvalHook, evaluated again by tools/test.py on 1 process from its best checkpoint; image evaluators on saved images
against reference statistics, in this process and with tools/dist_test.sh on 2."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import ROOT, free_port, run, train

EVAL_SMALL = str(ROOT / "tests/configs/toy_eval_small.py")
BASELINE = str(ROOT / "configs/toy/tree2d_baseline.py")
IMAGE_EVALUATORS = [  # random weights; small stand-ins for the large networks (an untrained Inception's features
    # hardly vary between images, a small ViT's do: the Gaussian statistics compared below are not degenerate)
    dict(type="FDDINOv2", random_weights=True, arch="vit_tiny_patch16_224"),
    dict(type="CMMD", random_weights=True, arch="ViT-S-32-alt"),
    dict(type="ClassifierAccuracy", random_weights=True, arch="resnet18", num_classes=4, size_px=32),
]


def load_test_tool():
    """tools/test.py as a module, run in this process: its 1-process runs share this process's imports."""
    spec = importlib.util.spec_from_file_location("diffscale_test_tool", ROOT / "tools" / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def close(a: dict, b: dict, rel: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= rel * max(1.0, abs(a[k])) for k in a)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """2-process DDP training whose EvalHook samples and evaluates collectively at steps 4, 8 and 10."""
    work = tmp_path_factory.mktemp("toy_eval")
    train(EVAL_SMALL, work, nproc=2)
    return work


@pytest.mark.dist
def test_eval_hook_logs_and_keeps_the_best(trained):
    history = [json.loads(line) for line in (trained / "eval_metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [4, 8, 10]
    best = min(history, key=lambda h: h["loss_sigma_0.1"])
    record = json.loads((trained / "best" / "best.json").read_text())
    assert record["step"] == best["step"] and record["value"] == best["loss_sigma_0.1"] and record["mode"] == "min"
    assert (trained / "best" / f"iter_{best['step']:07d}" / "manifest.json").is_file()
    assert [p.name for p in (trained / "best").iterdir() if p.is_dir()] == [f"iter_{best['step']:07d}"]
    ea = EventAccumulator(str(trained / "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()
    assert [e.step for e in ea.Scalars("eval/class_accuracy")] == [4, 8, 10]
    assert (trained / "checkpoints" / "iter_0000010").is_dir()


@pytest.mark.dist
def test_one_process_reproduces_the_two_process_eval_hook(trained, tmp_path, capsys):
    """tools/test.py with the baseline config on the best checkpoint, 1 process: the numbers the EvalHook got
    from the same samples generated on 2 ranks during training (same seeds, same average)."""
    history = {h["step"]: h for h in map(json.loads, (trained / "eval_metrics.jsonl").read_text().splitlines())}
    best_step = json.loads((trained / "best" / "best.json").read_text())["step"]
    code = load_test_tool().main([BASELINE, str(trained / "best"), "--num", "256", "--work-dir", str(tmp_path),
                             "--cfg-options", "evaluators.0.num_samples=256"])
    assert code == 0 and "support_share" in capsys.readouterr().out
    one = json.loads((tmp_path / "metrics.json").read_text())
    assert one["num"] == 256 and one["world_size"] == 1 and all(one["comparable"].values())
    two = {k: v for k, v in history[best_step].items() if k in one["metrics"]}
    assert close(one["metrics"], two), (one["metrics"], two)


@pytest.mark.dist
def test_image_evaluators_on_one_and_two_processes(tmp_path):
    """Reference statistics and an evaluation of other images in this process (1 process) equal the evaluation by
    tools/test.py --images on 2 processes against the same statistics (features reduced and gathered over ranks)."""
    from diffscale.evaluation.image_sources import open_source
    from diffscale.evaluation.pipeline import build_evaluators, feed, reference_stats, run_evaluation

    rng = np.random.default_rng(0)
    for name in ("ref", "gen"):
        smooth = np.linspace(0, 255, 32)[None, :, None, None] * rng.uniform(0.2, 1, (6, 1, 1, 3))
        images = (smooth + rng.integers(0, 60, (6, 32, 32, 3))).clip(0, 255).astype(np.uint8)
        np.savez(tmp_path / f"{name}.npz", images=images, labels=np.arange(6) % 4)
    evaluators = build_evaluators(IMAGE_EVALUATORS, torch.device("cpu"))
    feed(evaluators, open_source(tmp_path / "ref.npz").batches(4))  # other batches than the tool's: any split
    np.savez(tmp_path / "r.npz", **reference_stats(evaluators))
    with np.load(tmp_path / "r.npz") as f:
        ref = {k: f[k] for k in f.files}
    one = run_evaluation(evaluators, open_source(tmp_path / "gen.npz").batches(6), ref)

    (tmp_path / "eval.py").write_text(f"_base_ = ['{ROOT / 'tests/configs/toy_small.py'}']\n"
                                      f"evaluators = {IMAGE_EVALUATORS!r}\ntest_cfg = dict(images=True, batch_gpu=2)\n")
    # dist_test.sh: the checkpoint argument is unused with --images; --num is passed on past torchrun's parser.
    run(["env", f"PORT={free_port()}", "bash", str(ROOT / "tools/dist_test.sh"), str(tmp_path / "eval.py"), "-", "2",
         "--images", str(tmp_path / "gen.npz"), "--ref", str(tmp_path / "r.npz"), "--work-dir", str(tmp_path / "two"),
         "--num", "6"])
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["num"] == one["num"] == 6 and not any(two["comparable"].values())
    assert close(one["metrics"], two["metrics"], rel=1e-5), (one["metrics"], two["metrics"])
    metrics = one["metrics"]
    assert metrics["cmmd"] > 0 and metrics["fd_dinov2"] > 1e-3 and 0 <= metrics["top1_acc"] <= metrics["top5_acc"] <= 1
