"""CurationHook end to end: AJEST against a trained reference under each strategy, Early AJEST switch and
resume, and start-up errors for a missing or mismatched reference."""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import ROOT, last_checkpoint, train

REF = str(ROOT / "tests/configs/toy_ref_small.py")
AJEST = str(ROOT / "tests/configs/toy_ajest_small.py")
SECOND = str(ROOT / "tests/configs/toy_ajest_second_objective.py")


def scalars(work_dir) -> dict[str, list[tuple[int, float]]]:
    # The directory: all event files in it (a resumed run adds one).
    ea = EventAccumulator(str(work_dir / "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    work = tmp_path_factory.mktemp("reference")
    train(REF, work)
    return work


@pytest.mark.parametrize("run", [
    pytest.param((1, ()), id="single-local"),
    pytest.param((2, ("strategy.type=fsdp", "hooks.0.scope='global'")), id="fsdp-global", marks=pytest.mark.dist),
    pytest.param((2, ("strategy.type=deepspeed", "strategy.zero_stage=2")), id="zero2-local",
                 marks=pytest.mark.dist),
])
def test_ajest_trains_on_the_more_learnable_examples(run, reference, tmp_path):
    nproc, options = run
    out = train(AJEST, tmp_path, nproc=nproc, options=(f"hooks.0.reference.checkpoint={reference}", *options))
    assert "curation: super-batch 128 per device, keep 32" in out.stderr
    s = scalars(tmp_path)
    assert [step for step, _ in s["curation/score_kept"]] == [4, 8, 12]
    # JEST keeps examples whose learnability (L_learner - L_ref) is above the super-batch average.
    for (_, kept), (_, everything) in zip(s["curation/score_kept"], s["curation/score_all"], strict=True):
        assert kept > everything
    shares = sum(v for t, series in s.items() if t.startswith("curation/class_") for _, v in series[-1:])
    assert shares == pytest.approx(1.0, abs=1e-5)
    assert all(v > 0 for _, v in s["curation/scoring_ms"] + s["curation/reference_superbatch_loss"])
    # Validation on held-out data: at step 0, every 4 steps and at the end, global over ranks.
    val = [json.loads(line) for line in (tmp_path / "val_loss.jsonl").read_text().splitlines()]
    assert [v["step"] for v in val] == [0, 4, 8, 12] and [v["nimg"] for v in val] == [0, 512, 1024, 1536]
    assert val[-1]["loss"] < val[0]["loss"] and val[0]["train_seconds"] == 0 < val[1]["train_seconds"]
    assert [step for step, _ in s["val/loss"]] == [0, 4, 8, 12]


def test_early_ajest_switches_off_and_the_switch_survives_resume(reference, tmp_path):
    early = "hooks.0.early={'patience': 2, 'momentum': 0.0, 'check_interval': 2}"
    options = (f"hooks.0.reference.checkpoint={reference}", early, "train_cfg.max_iters=10")
    out = train(AJEST, tmp_path, options=options)
    assert "Early AJEST: learner loss" in out.stderr
    state = torch.load(last_checkpoint(tmp_path) / "trainer.pt", weights_only=True)["hooks"]["CurationHook"]
    switch = state["switch_step"]
    assert state["active"] is False and switch is not None and switch <= 10
    train(AJEST, tmp_path, options=(*options[:2], "train_cfg.max_iters=16"), extra=("--resume",))
    state = torch.load(last_checkpoint(tmp_path) / "trainer.pt", weights_only=True)["hooks"]["CurationHook"]
    assert state["active"] is False and state["switch_step"] == switch
    # Validation resumed where it stopped: no second step-0 point, training time carried on.
    val = [json.loads(line) for line in (tmp_path / "val_loss.jsonl").read_text().splitlines()]
    assert [v["step"] for v in val] == [0, 4, 8, 10, 12, 16]
    seconds = [v["train_seconds"] for v in val]
    assert seconds == sorted(seconds)
    # No scoring after the switch: the last super-batch loss point is at the switch step.
    assert max(step for step, _ in scalars(tmp_path)["curation/learner_superbatch_loss"]) == switch


def test_missing_reference_fails_at_start_up(tmp_path):
    out = train(AJEST, tmp_path, options=(f"hooks.0.reference.checkpoint={tmp_path / 'nope'}",), check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"config error: reference checkpoint '{tmp_path / 'nope'}': no such checkpoint" in out.stderr


def test_mismatched_reference_fails_at_start_up(reference, tmp_path):
    out = train(AJEST, tmp_path, options=(f"hooks.0.reference.checkpoint={reference}",
                                          "hooks.0.reference.model.net.hidden_dim=32"), check=False)
    assert out.returncode == 2
    assert "config error: CurationHook.reference.checkpoint" in out.stderr
    assert "does not match CurationHook.reference.model: Error(s) in loading state_dict" in out.stderr
    assert "size mismatch" in out.stderr


def test_autoguided_samples_differ_from_unguided(reference, tmp_path):
    """The reference as autoguidance guide at w = 3 changes the plotted samples (same noise) against w = 1,
    where the sampler skips the guide (the formula itself is checked in tests/unit/test_edm.py)."""
    guide = ("{'model': {'type': 'EDMPrecond', 'label_dim': 2, 'net': {'type': 'ToyMLP', 'hidden_dim': 16}}, "
             f"'checkpoint': '{reference}', 'ema': 'pf_0.100'}}")
    images = {}
    for w in (1.0, 3.0):
        work = tmp_path / f"w{w}"
        hook = (f"hooks=[{{'type': 'ToyPlotHook', 'num_samples': 256, 'ema': None, 'guide': {guide}, "
                f"'sampler': {{'type': 'EDMHeunSampler', 'num_steps': 8, 'sigma_max': 5.0, 'guidance': {w}}}}}]")
        out = train(str(ROOT / "tests/configs/toy_small.py"), work, options=(hook, "train_cfg.max_iters=2"))
        assert "Traceback" not in out.stderr
        images[w] = (work / "samples" / "toy_raw_iter_0000002.png").read_bytes()
    assert images[3.0] != images[1.0]


def test_curation_and_validation_with_a_second_objective(reference, tmp_path):
    """Another objective (t and noise, tests/hooks_for_tests.py): the hooks score it through sample_condition and
    per_example, the step trains at the condition the kept examples were scored at, validation reports its loss."""
    train(SECOND, tmp_path, options=(f"hooks.0.reference.checkpoint={reference}",))
    s = scalars(tmp_path)
    for (_, kept), (_, everything) in zip(s["curation/score_kept"], s["curation/score_all"], strict=True):
        assert kept > everything
    assert [v for _, v in s["train/from_curation"]] == [1.0, 1.0, 1.0]  # every batch carried its scored condition
    val = [json.loads(line) for line in (tmp_path / "val_loss.jsonl").read_text().splitlines()]
    assert [v["step"] for v in val] == [0, 4, 8, 12] and val[-1]["loss"] < val[0]["loss"]
