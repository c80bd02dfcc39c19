"""DMD2 on images with the GAN head (tests/configs/dmd2_images_small.py: configs/dmd2/dmd2_cifar10_gan.py on a tiny
DDPM++ SongUNet, 3x8x8 MDS images; three parts, two phases, the generator stepping at iterations 0 and 5; the fake
score a FakeScoreWithHead; diffusion GAN): the same weights of every part under ddp, fsdp and deepspeed ZeRO-2/3
after 10 fp32 steps on 2 processes (the generator-phase GAN term back-propagates through the fake score, which that
phase does not step: a gradient leaking into it changes the fake score by ~lr under ddp and fsdp, and stops ZeRO);
the frozen teacher never changes and never enters an optimizer; kill -9 of the whole job (torchrun's workers too)
after the checkpoint at 5, then --resume, equals the uninterrupted run (1 process, ddp, fsdp: bitwise on
1 process and under ddp), the generator's step at iteration 5 included; the generator exports alone and samples
the same from the checkpoint and the export. The uninterrupted 2-process runs of the agreement tests are the
resume tests' references."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.dist.test_resume import final_weights, kill9_after_checkpoint
from tests.helpers import ROOT, export, last_checkpoint, max_abs_diff, run, train, train_cmd

DMD2 = str(ROOT / "tests" / "configs" / "dmd2_images_small.py")
PARTS = ("generator", "fake_score", "real_score")
STRATEGIES = {  # name: (processes, cfg-options)
    "single": (1, ()),
    "ddp": (2, ()),
    "fsdp": (2, ("strategy.type=fsdp",)),
    "zero2": (2, ("strategy.type=deepspeed", "strategy.zero_stage=2")),
    "zero3": (2, ("strategy.type=deepspeed", "strategy.zero_stage=3")),
}
AGREE = ("fsdp", "zero2", "zero3")
RESUME = {"single": 0.0, "ddp": 0.0, "fsdp": 1e-6}  # name: tolerance (ZeRO resume: tests/dist/test_nonfinite.py and
# the planted-payload test load ZeRO checkpoints; the 50 s ZeRO-3 case was cut for CI time)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """64 MDS images (3x8x8, 4 classes) and the teacher: the config's tiny EDMPrecond(SongUNet) with random weights
    (seeded, moved off EDM's near-identity init) exported as a .safetensors part 'model'."""
    from safetensors.torch import save_file

    from diffscale.config import load_config
    from diffscale.registry import MODELS, build
    from tests.data_helpers import make_mds

    root = tmp_path_factory.mktemp("dmd2_inputs")
    data = make_mds(root / "train", num_samples=64, shape=(3, 8, 8), num_classes=4)[0]
    torch.manual_seed(0)
    teacher = build(MODELS, dict(load_config(DMD2).tiny), "tiny")
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {k: v.contiguous() for k, v in teacher.state_dict().items()}
    save_file({f"model.{k}": v for k, v in state.items()}, str(root / "teacher.safetensors"))
    return {"data": data, "teacher": root / "teacher.safetensors", "state": state}


def options(inputs) -> tuple[str, ...]:
    return (*(f"parts.{p}.init.checkpoint={inputs['teacher']}" for p in PARTS), f"data.train.path={inputs['data']}")


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory):
    """runs(name) -> the work_dir of one uninterrupted run under STRATEGIES[name], trained once per module."""
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            nproc, extra = STRATEGIES[name]
            work = tmp_path_factory.mktemp(f"dmd2_{name}")
            out = train(DMD2, work, nproc=nproc, options=(*options(inputs), *extra))
            (work / "train.stderr").write_text(out.stderr)
            done[name] = work
        return done[name]

    return get


@pytest.fixture(scope="module")
def ddp_work(runs):
    return runs("ddp")


@pytest.fixture(scope="module")
def ddp_dmd2(ddp_work) -> dict:
    return export(last_checkpoint(ddp_work))


@pytest.mark.dist
def test_ddp_reference_frozen_teacher_and_moving_parts(ddp_dmd2, ddp_work, inputs):
    weights, teacher = ddp_dmd2, inputs["state"]
    real = {k[len("real_score."):]: v for k, v in weights.items() if k.startswith("real_score.")}
    assert real.keys() == teacher.keys() and all(torch.equal(real[k], v) for k, v in teacher.items())  # frozen
    for part in ("generator", "fake_score"):  # trained: moved away from the teacher they started from
        moved = max((weights[f"{part}.{k}"] - v).abs().max().item() for k, v in teacher.items())
        assert moved > 1e-4, (part, moved)
        # net.map_augment is left out by the parts' `trainable` patterns: exactly the teacher's
        assert torch.equal(weights[f"{part}.net.map_augment.weight"], teacher["net.map_augment.weight"])
    head = [k for k in weights if k.startswith("fake_score.head.")]
    assert head and all(k[len("fake_score."):] not in teacher for k in head)  # the head: the fake score's own
    assert any(k.startswith("ema.generator.pf_0.050.") for k in weights)
    assert any(k.startswith("ema.fake_score.pf_0.050.head.") for k in weights)
    stderr = (ddp_work / "train.stderr").read_text()
    assert "part fake_score: FakeScoreWithHead parameters: 0.198M (0.197M trainable)" in stderr
    assert "part real_score: EDMPrecond parameters: 0.181M (frozen)" in stderr
    steps = torch.load(last_checkpoint(ddp_work) / "trainer.pt", weights_only=True)["part_steps"]
    assert steps == {"generator": 2, "fake_score": 10}, steps  # the generator at iterations 0 and 5


@pytest.mark.dist
@pytest.mark.parametrize("name", AGREE)
def test_every_part_agrees_with_ddp(name, ddp_dmd2, runs):
    ckpt = last_checkpoint(runs(name))
    diff = max_abs_diff(ddp_dmd2, export(ckpt))
    print(f"{name}: max |w - w_ddp| over every part and average = {diff:.3g}")
    assert diff < 1e-5
    if name.startswith("zero"):  # one engine per trainable part; the frozen teacher is no engine
        assert sorted(p.name for p in (ckpt / "ds").iterdir()) == ["fake_score", "generator"]
        assert (ckpt / "real_score.pt").is_file()


@pytest.mark.dist
@pytest.mark.parametrize("name", list(RESUME))
def test_kill9_then_resume_matches_uninterrupted(name, inputs, runs, tmp_path):
    """Killed mid-run after the checkpoint at 5, resumed from it: the resumed run redoes iteration 5, the
    generator's second step, and ends on the uninterrupted run's weights."""
    nproc, extra = STRATEGIES[name]
    opts, killed = (*options(inputs), *extra), tmp_path / "killed"
    kill9_after_checkpoint(train_cmd(DMD2, killed, nproc, opts), killed, 5, tmp_path / "killed.log")
    assert last_checkpoint(killed).name == "iter_0000005"  # killed before the end
    out = train(DMD2, killed, nproc=nproc, options=opts, extra=("--resume",))
    assert "resumed from" in out.stderr and "iter_0000005 at step 5" in out.stderr
    diff = max_abs_diff(final_weights(runs(name)), final_weights(killed))
    print(f"{name}: max |w_resumed - w_uninterrupted| = {diff:.3g}")
    assert diff <= RESUME[name]
    steps = torch.load(last_checkpoint(killed) / "trainer.pt", weights_only=True)["part_steps"]
    assert steps == {"generator": 2, "fake_score": 10}, steps


@pytest.mark.dist
def test_export_and_generate_sample_the_generator(ddp_work, ddp_dmd2, tmp_path):
    """tools/export_checkpoint.py --part generator writes that part alone; tools/generate.py samples test_cfg.part
    (the generator, one step x = G(80 z; 80)) from the work_dir and from the export, with the same result."""
    from safetensors import safe_open

    out = tmp_path / "generator.safetensors"
    run([sys.executable, str(ROOT / "tools/export_checkpoint.py"), str(last_checkpoint(ddp_work)), str(out),
         "--part", "generator"])
    with safe_open(str(out), framework="pt") as f:
        keys = set(f.keys())
    assert keys == {k for k in ddp_dmd2 if k.startswith(("generator.", "ema.generator."))}
    samples = []
    for source in (str(ddp_work), str(out)):
        folder = tmp_path / f"samples_{len(samples)}"
        run([sys.executable, str(ROOT / "tools/generate.py"), DMD2, source, "--out", str(folder), "--num", "8",
             "--ema", "pf_0.050"])
        samples.append(np.load(folder / "samples.npz"))
    assert samples[0]["images"].shape == (8, 8, 8, 3)
    assert all(np.array_equal(samples[0][k], samples[1][k]) for k in samples[0].files)
