"""The EDM2 Tiny ImageNet workflow on CPU, shrunk through --cfg-options only: a Tiny ImageNet tree in the official
layout, converted to MDS by the tool; the reference trained with its config; the AJEST learner under ddp, fsdp
and deepspeed with 2 processes; resume equal to the uninterrupted run; export; generation over 2 ranks equal to
1 rank."""

import json
import re
import sys

import numpy as np
import pytest
import torch

from tests.data_helpers import make_tiny_imagenet
from tests.helpers import ROOT, export, free_port, last_checkpoint, run, train

REF_CFG = str(ROOT / "configs/ajest/edm2_xxs_tiny_ref.py")
AJEST_CFG = str(ROOT / "configs/ajest/edm2_xs_tiny.py")
BASELINE_CFG = str(ROOT / "configs/ajest/edm2_xs_tiny_baseline.py")
LEARNER = dict(channels=16, img_resolution=16, label_dim=4, num_blocks=1, channels_per_head=16)
REFERENCE = dict(LEARNER, channels=8, channels_per_head=8)  # half the width, as in the configs


def net(prefix: str, sizes: dict) -> list[str]:
    return [f"{prefix}.{k}={v}" for k, v in sizes.items()]


def common(data: dict, steps: int) -> list[str]:
    """batch 8 = batch_gpu 2 x accumulation x world size; tiny sampling; checkpoints every 2 steps."""
    return [*net("model.net", LEARNER), "train_cfg.batch_size=8", "train_cfg.batch_gpu=2", "train_cfg.precision='fp32'",
            f"train_cfg.max_iters={steps}", "train_cfg.log_interval=1", "checkpoint.interval=2",
            "lr_schedule.rampup_iters=0", f"data.train.path={data['train']}", f"data.val.path={data['val']}",
            "data.train.num_workers=0", "test_cfg.sampler.num_steps=3", "test_cfg.batch_gpu=4"]


def hooks_without_curation(first: int) -> list[str]:
    """The EMA, validation and sample hooks at indices first, first + 1, first + 2."""
    v, s = first + 1, first + 2
    return [f"hooks.{v}.interval=2", f"hooks.{v}.num_batches=1", f"hooks.{s}.num=4", f"hooks.{s}.sampler.num_steps=3"]


def ajest_options(data: dict, reference, steps: int) -> list[str]:
    return [*common(data, steps), *hooks_without_curation(1),
            *net("hooks.0.reference.model.net", REFERENCE), f"hooks.0.reference.checkpoint={reference}",
            *net("hooks.3.guide.model.net", REFERENCE), f"hooks.3.guide.checkpoint={reference}",
            *net("test_cfg.guide.model.net", REFERENCE), f"test_cfg.guide.checkpoint={reference}"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    tree = make_tiny_imagenet(root, num_classes=4, per_class=8, val_per_class=2)
    # One command converts both splits into mds/train and mds/val.
    proc = run([sys.executable, str(ROOT / "tools/convert_dataset.py"), "--source", "tiny-imagenet", "--input",
                str(tree), "--output", str(root / "mds"), "--split", "all", "--resolution", "16"])
    assert proc.stdout.count("read back and checked") == 2
    out = {split: root / "mds" / split for split in ("train", "val")}
    meta = json.loads((out["train"] / "diffscale.json").read_text())
    assert meta["num_samples"] == 32 and meta["resolution"] == 16 and len(meta["class_names"]) == 4
    return out


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    work = tmp_path_factory.mktemp("ref")
    options = [*common(data, 2), *net("model.net", REFERENCE), *hooks_without_curation(0)]
    out = train(REF_CFG, work, options=tuple(options))
    assert "EDM2Precond parameters" in out.stderr
    assert (work / "samples" / "grid_pf_0.100_iter_0000002.png").is_file()
    return work


@pytest.mark.dist
@pytest.mark.parametrize("strategy", [
    ("strategy.type='ddp'",), ("strategy.type='fsdp'",), ("strategy.type='deepspeed'", "strategy.zero_stage=2"),
], ids=["ddp", "fsdp", "zero2"])
def test_ajest_learner_trains_under_each_strategy(strategy, data, reference, tmp_path):
    out = train(AJEST_CFG, tmp_path, nproc=2, options=(*ajest_options(data, reference, 2), *strategy))
    assert "curation: super-batch 10 per device, keep 2" in out.stderr
    val = [json.loads(line) for line in (tmp_path / "val_loss.jsonl").read_text().splitlines()]
    assert [v["step"] for v in val] == [0, 2] and all(np.isfinite(v["loss"]) for v in val)
    # The autoguided sample grid of the EMA (guide: the reference), 4 images of 16x16 in one row.
    assert (tmp_path / "samples" / "grid_pf_0.100_iter_0000002.png").is_file()
    state = torch.load(last_checkpoint(tmp_path) / "rank_00001.pt", weights_only=True)["loader"]
    assert state["pos"] > 0  # the loader's cursor is in every checkpoint, per rank


def test_resume_mid_epoch_equals_the_uninterrupted_run(data, tmp_path):
    """4 steps in one go against 2 steps + --resume to 4, one process: bitwise equal weights, the loader
    resumed mid-epoch from its cursor (6 images per step from 32: step 3 ends at image 18 of epoch 0)."""
    options = (*common(data, 4), *hooks_without_curation(0), "train_cfg.batch_size=6", "train_cfg.batch_gpu=6")
    train(BASELINE_CFG, tmp_path / "whole", options=options)
    train(BASELINE_CFG, tmp_path / "split", options=(*options, "train_cfg.max_iters=3"))
    out = train(BASELINE_CFG, tmp_path / "split", options=options, extra=("--resume",))
    assert re.search(r"resumed from .*iter_0000003 at step 3", out.stderr)
    whole, split = export(last_checkpoint(tmp_path / "whole")), export(last_checkpoint(tmp_path / "split"))
    assert whole.keys() == split.keys() and any(k.startswith("ema.pf_0.100.") for k in whole)
    assert all(torch.equal(whole[k], split[k]) for k in whole)  # weights and both EMAs


def test_export_generate_over_two_ranks_equals_one_then_evaluate(data, reference, tmp_path):
    work = tmp_path / "learner"
    train(AJEST_CFG, work, options=tuple(ajest_options(data, reference, 2)))
    export = tmp_path / "learner.safetensors"
    run([sys.executable, str(ROOT / "tools/export_checkpoint.py"), str(last_checkpoint(work)), str(export)])
    grids = {}
    for nproc in (1, 2):
        out = tmp_path / f"gen{nproc}"
        tool = [str(ROOT / "tools/generate.py"), AJEST_CFG, str(export), "--out", str(out), "--seeds", "0-4",
                "--classes", "1", "3", "--guidance", "2.0", "--cfg-options", *ajest_options(data, reference, 2)]
        cmd = [sys.executable, *tool] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
            *tool, "--launcher", "pytorch"]
        run(cmd)
        samples = np.load(out / "samples.npz")
        assert samples["images"].shape == (5, 16, 16, 3) and samples["images"].dtype == np.uint8
        assert samples["seeds"].tolist() == [0, 1, 2, 3, 4] and samples["labels"].tolist() == [1, 3, 1, 3, 1]
        assert sorted(p.name for p in out.glob("0*.png")) == [f"{s:06d}.png" for s in range(5)]
        assert json.loads((out / "generate.json").read_text())["sampler"]["guidance"] == 2.0
        grids[nproc] = samples["images"]
        assert (out / "grid.png").is_file()
    assert np.array_equal(grids[1], grids[2])  # the same samples at any world size
    # Reference statistics of the validation shards, then tools/test.py on the export (autoguided samples,
    # FID with an untrained Inception: the plumbing, not the number, which is marked not comparable).
    evaluators = "[{'type': 'FID', 'random_weights': True}]"
    (tmp_path / "eval_cfg.py").write_text(f"evaluators = {evaluators}\n")
    run([sys.executable, str(ROOT / "tools/compute_ref_stats.py"), "--data", str(data["val"]), "--out",
         str(tmp_path / "ref.npz"), "--config", str(tmp_path / "eval_cfg.py"), "--batch", "4"])
    run([sys.executable, str(ROOT / "tools/test.py"), AJEST_CFG, str(export), "--num", "4", "--ref",
         str(tmp_path / "ref.npz"), "--work-dir", str(tmp_path / "test"), "--cfg-options",
         *ajest_options(data, reference, 2), f"evaluators={evaluators}"])
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert np.isfinite(metrics["metrics"]["fid"]) and metrics["num"] == 4 and not metrics["comparable"]["fid"]
