"""DMD2 on the 2D tree toy (three parts, two phases, the generator stepping every 5th iteration): the same weights of
every part under ddp, fsdp and deepspeed ZeRO-2/3 after 10 fp32 steps on 2 processes; the frozen teacher never
changes and never enters an optimizer; kill -9 and --resume equals an uninterrupted run (bitwise on 1 process and
2-process DDP, within 1e-6 under FSDP and ZeRO-3), generator-step schedule included."""

import json
import sys

import pytest
import torch

from tests.dist.test_resume import kill9_resume_and_compare
from tests.helpers import ROOT, SMALL, export, last_checkpoint, max_abs_diff, run, train

DMD2 = str(ROOT / "tests" / "configs" / "dmd2_small.py")
RESUME = str(ROOT / "tests" / "configs" / "dmd2_resume.py")
PARTS = ("generator", "fake_score", "real_score")
AGREE = {
    "fsdp": ("strategy.type=fsdp",),
    "zero2": ("strategy.type=deepspeed", "strategy.zero_stage=2"),
    "zero3": ("strategy.type=deepspeed", "strategy.zero_stage=3"),
}
RESUME_CASES = {  # name: (processes, cfg-options, tolerance)
    "single": (1, (), 0.0),
    "ddp": (2, (), 0.0),
    "fsdp": (2, ("strategy.type=fsdp",), 1e-6),
    "zero3": (2, ("strategy.type=deepspeed", "strategy.zero_stage=3"), 1e-6),
}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A trained toy EDM teacher (tests/configs/toy_small.py: 10 steps, EMA pf_0.050 among its averages)."""
    work = tmp_path_factory.mktemp("teacher")
    train(SMALL, work)
    return work


def teacher_options(teacher) -> tuple[str, ...]:
    return tuple(f"parts.{p}.init.checkpoint={teacher}" for p in PARTS)


@pytest.fixture(scope="module")
def ddp_work(teacher, tmp_path_factory):
    work = tmp_path_factory.mktemp("dmd2_ddp")
    train(DMD2, work, nproc=2, options=teacher_options(teacher))
    return work


@pytest.fixture(scope="module")
def ddp_dmd2(ddp_work) -> dict:
    return export(last_checkpoint(ddp_work))


@pytest.mark.dist
def test_ddp_reference_frozen_teacher_and_moving_parts(ddp_dmd2, teacher):
    weights = ddp_dmd2
    teacher_weights = export(last_checkpoint(teacher))
    init = {k[len("ema.pf_0.050."):]: v for k, v in teacher_weights.items() if k.startswith("ema.pf_0.050.")}
    real = {k[len("real_score."):]: v for k, v in weights.items() if k.startswith("real_score.")}
    assert real and all(torch.equal(real[k], v) for k, v in init.items())  # frozen: bitwise the teacher's average
    for part in ("generator", "fake_score"):  # trained: moved away from the teacher they started from
        moved = max((weights[f"{part}.{k}"] - v).abs().max().item() for k, v in init.items())
        assert moved > 1e-4, (part, moved)
    assert any(k.startswith("ema.generator.pf_0.050.") for k in weights)
    assert any(k.startswith("ema.fake_score.") for k in weights)


@pytest.mark.dist
@pytest.mark.parametrize("name", list(AGREE))
def test_every_part_agrees_with_ddp(name, ddp_dmd2, teacher, tmp_path):
    out = train(DMD2, tmp_path, nproc=2, options=(*teacher_options(teacher), *AGREE[name]))
    assert "part real_score: EDMPrecond parameters: 0.034M (frozen)" in out.stderr
    ckpt = last_checkpoint(tmp_path)
    weights = export(ckpt)
    diff = max_abs_diff(ddp_dmd2, weights)
    print(f"{name}: max |w - w_ddp| over every part and average = {diff:.3g}")
    assert diff < 1e-5
    if name.startswith("zero"):  # one engine per trainable part; the frozen teacher is no engine
        assert sorted(p.name for p in (ckpt / "ds").iterdir()) == ["fake_score", "generator"]
        assert (ckpt / "real_score.pt").is_file()


@pytest.fixture(scope="module")
def single_resume_reference(teacher, tmp_path_factory):
    work = tmp_path_factory.mktemp("dmd2_resume_reference")
    train(RESUME, work, options=teacher_options(teacher))
    return work


@pytest.mark.dist
@pytest.mark.parametrize("name", list(RESUME_CASES))
def test_kill9_then_resume_matches_uninterrupted(name, teacher, single_resume_reference, tmp_path):
    nproc, options, tol = RESUME_CASES[name]
    options = (*teacher_options(teacher), *options)
    diff, reference, killed = kill9_resume_and_compare(RESUME, tmp_path, name, nproc, options,
                                                       single_resume_reference, interval=6)
    assert diff <= tol
    # The generator stepped at iterations 0, 5, 10, 15 (gen_update_every 5) in both runs.
    for work in (reference, killed):
        steps = torch.load(last_checkpoint(work) / "trainer.pt", weights_only=True)["part_steps"]
        assert steps == {"generator": 4, "fake_score": 18}, steps


@pytest.mark.dist
def test_export_and_test_tool_sample_the_generator(ddp_work, ddp_dmd2, tmp_path):
    """tools/export_checkpoint.py --part generator writes that part alone; tools/test.py samples test_cfg.part (the
    generator, one step, its EMA) from the checkpoint and from the export, with the same result."""
    from safetensors import safe_open

    out = tmp_path / "generator.safetensors"
    run([sys.executable, str(ROOT / "tools/export_checkpoint.py"), str(last_checkpoint(ddp_work)), str(out),
         "--part", "generator"])
    with safe_open(str(out), framework="pt") as f:
        keys = set(f.keys())
        assert json.loads(f.metadata()["parts"]) == ["generator"]
    assert keys == {k for k in ddp_dmd2 if k.startswith(("generator.", "ema.generator."))}
    results = []
    for source in (str(ddp_work), str(out)):
        work = tmp_path / f"test_{len(results)}"
        run([sys.executable, str(ROOT / "tools/test.py"), DMD2, source, "--num", "256", "--work-dir", str(work)])
        results.append(json.loads((work / "metrics.json").read_text())["metrics"])
    assert 0 <= results[0]["support_share"] <= 1 and results[0] == results[1]
