"""kill -9 in the middle of a run, then --resume: the final weights equal an uninterrupted run's
(bitwise; the shared helpers here serve the 2-process cases of test_dmd2, test_ddpm and test_flow), data order
included; a corrupted newest checkpoint falls back; SIGTERM saves and exits inside the grace period."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, env, export, last_checkpoint, max_abs_diff, train, train_cmd

RESUME = str(ROOT / "tests" / "configs" / "toy_resume.py")

# The one-part toy on 1 process here; 2-process resume (killing torchrun's workers too, see kill9_after_checkpoint)
# is checked on the three-part DMD2 images (tests/dist/test_dmd2.py: DDP bitwise, FSDP2 within 1e-6, per-part files),
# on DDPM and on FlowDiT (test_ddpm.py, test_flow.py: DDP bitwise).
CASES = {  # name: (processes, cfg-options, tolerance)
    "single": (1, (), 0.0),
}


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    # A new session, so the whole launcher tree can be killed at once.
    return subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for_checkpoint(proc: subprocess.Popen, work_dir: Path, step: int, timeout: float = 300) -> None:
    pointer = work_dir / "last_checkpoint"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pointer.is_file() and int(pointer.read_text().strip().rsplit("_", 1)[1]) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (exit {proc.returncode}) before checkpoint {step}")
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint {step} within {timeout} s")


def kill9_after_checkpoint(cmd: list[str], work_dir: Path, step: int, log: Path) -> None:
    """Start `cmd`, wait for its checkpoint `step`, let it run a few more steps (lost, to be redone after a resume)
    and kill -9 the launcher and every worker it started, at once. torchrun starts each worker in its own session,
    so killing the launcher's process group alone would leave them running: they would finish the run before or
    while --resume starts, and the resume would test nothing."""
    proc = start(cmd, log)
    workers: list[int] = []
    try:
        wait_for_checkpoint(proc, work_dir, step)
        time.sleep(0.3)
    finally:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        workers = [int(pid) for pid in children.read_text().split()] if children.exists() else []
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in workers:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    deadline = time.time() + 30
    while any(_running(pid) for pid in workers):
        assert time.time() < deadline, "torchrun's workers outlived SIGKILL"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (its state letter in /proc/<pid>/stat)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill9_resume_and_compare(config: str, tmp_path: Path, name: str, nproc: int, options: tuple[str, ...],
                             single_reference: Path, interval: int) -> tuple[float, Path, Path]:
    """The resume check of one case: an uninterrupted run (the shared single-process one for 'single'), a run of
    `config` killed -9 past its first checkpoint (every `interval` steps) and resumed. Returns (max |w_resumed -
    w_uninterrupted| over every exported tensor, the uninterrupted work_dir, the resumed one)."""
    reference = single_reference
    if name != "single":
        reference = tmp_path / "reference"
        train(config, reference, nproc=nproc, options=options)
    killed = tmp_path / "killed"
    kill9_after_checkpoint(train_cmd(config, killed, nproc, options), killed, interval, tmp_path / "killed.log")
    assert last_checkpoint(killed).name in (f"iter_{interval:07d}", f"iter_{2 * interval:07d}")
    out = train(config, killed, nproc=nproc, options=options, extra=("--resume",))
    assert "resumed from" in out.stderr
    diff = max_abs_diff(final_weights(reference), final_weights(killed))
    print(f"{name}: max |w_resumed - w_uninterrupted| = {diff:.3g}")
    return diff, reference, killed


def final_weights(work_dir: Path) -> dict:
    return export(last_checkpoint(work_dir))


@pytest.fixture(scope="module")
def single_reference(tmp_path_factory) -> Path:
    """An uninterrupted single-process run of the resume config (checkpoints at 10, 20, 30)."""
    work = tmp_path_factory.mktemp("single_reference")
    train(RESUME, work)
    return work


@pytest.mark.dist
@pytest.mark.parametrize("name", list(CASES))
def test_kill9_then_resume_matches_uninterrupted(name, tmp_path, single_reference):
    nproc, options, tol = CASES[name]
    diff, _, _ = kill9_resume_and_compare(RESUME, tmp_path, name, nproc, options, single_reference, interval=10)
    assert diff <= tol


def test_corrupted_newest_checkpoint_falls_back(tmp_path, single_reference):
    work = tmp_path / "work"
    shutil.copytree(single_reference, work)
    (work / "last_checkpoint").write_text(str(work / "checkpoints" / "iter_0000030") + "\n")
    newest = last_checkpoint(work)
    victim = newest / "model.pt"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # truncated by a dying disk
    out = train(RESUME, work, extra=("--resume",))
    assert "iter_0000030 is incomplete or corrupted" in out.stderr
    assert "resumed from" in out.stderr and "iter_0000020" in out.stderr
    assert max_abs_diff(final_weights(single_reference), final_weights(work)) == 0.0


# The stopped run also has expensive end-of-run work (a ToyPlotHook sampling and plotting 200k points twice, tens of
# seconds), which a SIGTERM exit must skip: a cluster kills 30 s after its SIGTERM.
PLOT_AT_END = ("hooks=[{'type': 'EMAHook', 'stds': [0.05, 0.1]}, {'type': 'SlowDownHook', 'seconds': 0.08}, "
               "{'type': 'ToyPlotHook', 'num_samples': 200000}]",)


def test_sigterm_saves_and_exits_zero_within_the_grace_period(tmp_path, single_reference):
    import re

    proc = start(train_cmd(RESUME, tmp_path, options=PLOT_AT_END), tmp_path / "run.log")
    try:
        wait_for_checkpoint(proc, tmp_path, 10)
        time.sleep(0.3)
        signalled = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        exit_s = time.perf_counter() - signalled
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = (tmp_path / "run.log").read_text()
    stopped_at = int(last_checkpoint(tmp_path).name.split("_")[1])
    assert 10 < stopped_at < 30, stopped_at  # saved at the step it stopped on, not at an interval
    assert "SIGTERM" in log
    save_s = float(re.findall(rf"saved \S+iter_{stopped_at:07d} \(([\d.]+) s\)", log)[-1])
    print(f"SIGTERM to exit: {exit_s:.2f} s (the save: {save_s:.2f} s, a step: 0.08 s + compute)")
    assert exit_s < 0.5 + save_s + 5.0  # the step in progress, the save, and under 5 s more
    assert not list((tmp_path / "samples").glob("toy_*.png")), "the end-of-run plot ran after SIGTERM"
    # And the run resumes to the same result as one that was never stopped.
    train(RESUME, tmp_path, extra=("--resume",))
    assert max_abs_diff(final_weights(single_reference), final_weights(tmp_path)) == 0.0
