"""The shell launchers in tools/: syntax, usage errors, and the srun command slurm_train.sh builds.

SLURM is not installed in CI, so a fake `srun` first on PATH records its argv and environment and exits 0.
"""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SLURM_TRAIN = ROOT / "tools" / "slurm_train.sh"
SCRIPTS = sorted((ROOT / "tools").glob("*.sh"))
TOY = str(ROOT / "tests" / "configs" / "toy_small.py")  # batch 128: divides on 1, 2, 4, 8, 16 processes

FAKE_SRUN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_SRUN_LOG.argv"
env > "$FAKE_SRUN_LOG.env"
"""


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_shell_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_scripts_are_executable(script):
    assert os.access(script, os.X_OK), f"chmod +x {script.relative_to(ROOT)}"


def _run_slurm_train(tmp_path: Path, args: list[str], **env_overrides: str):
    """Run tools/slurm_train.sh from tmp_path with a fake srun; return (result, argv or None, env or None)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    srun = bin_dir / "srun"
    srun.write_text(FAKE_SRUN)
    srun.chmod(0o755)
    log = tmp_path / "srun"
    env = {k: v for k, v in os.environ.items() if k not in {"GPUS", "GPUS_PER_NODE", "CPUS_PER_TASK", "SRUN_ARGS"}}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_SRUN_LOG=str(log), **env_overrides)
    result = subprocess.run(["bash", str(SLURM_TRAIN), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    argv_file, env_file = Path(f"{log}.argv"), Path(f"{log}.env")
    argv = argv_file.read_text().splitlines() if argv_file.exists() else None
    srun_env = dict(ln.split("=", 1) for ln in env_file.read_text().splitlines() if "=" in ln) if argv else None
    return result, argv, srun_env


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(srun's own options, the command srun runs), split at the `python` it launches."""
    at = argv.index("python")
    return argv[:at], argv[at:]


@pytest.mark.parametrize("nargs", [0, 3])
def test_slurm_train_usage_with_too_few_args(tmp_path, nargs):
    result, argv, _ = _run_slurm_train(tmp_path, ["gpu", "job", "cfg.py"][:nargs])
    assert result.returncode != 0
    assert "usage" in result.stderr.lower() and "PARTITION JOB_NAME CONFIG WORK_DIR" in result.stderr
    assert argv is None, "srun must not run"


def test_slurm_train_builds_srun_command(tmp_path):
    extra = ["--resume", "--cfg-options", "train_cfg.max_iters=10", "checkpoint.keep=3"]
    config = str(ROOT / "configs/toy/tree2d_ajest.py")
    result, argv, env = _run_slurm_train(
        tmp_path, ["gpu_part", "ajest", config, "work_dirs/run 1", *extra],
        GPUS="16", GPUS_PER_NODE="8", CPUS_PER_TASK="4", SRUN_ARGS="--time=1:00:00 --exclusive")
    assert result.returncode == 0, result.stderr
    srun_opts, command = _split(argv)
    assert srun_opts[srun_opts.index("-p") + 1] == "gpu_part"
    for opt in ["--job-name=ajest", "--gres=gpu:8", "--ntasks=16", "--ntasks-per-node=8", "--cpus-per-task=4",
                "--time=1:00:00", "--exclusive"]:
        assert opt in srun_opts, f"{opt} missing from srun options {srun_opts}"
    assert command[:2] == ["python", "-u"] and Path(command[2]).resolve() == ROOT / "tools" / "train.py"
    assert command[3:] == [config, "--work-dir", "work_dirs/run 1", "--launcher", "slurm",
                           *extra]
    first = Path(env["PYTHONPATH"].split(os.pathsep)[0])
    assert first.resolve() == ROOT, "the repo root comes first on PYTHONPATH"


def test_slurm_train_defaults(tmp_path):
    result, argv, _ = _run_slurm_train(tmp_path, ["p", "j", TOY, "wd"])
    assert result.returncode == 0, result.stderr
    srun_opts, command = _split(argv)
    for opt in ["--gres=gpu:8", "--ntasks=8", "--ntasks-per-node=8", "--cpus-per-task=5"]:
        assert opt in srun_opts
    assert command[-4:] == ["--work-dir", "wd", "--launcher", "slurm"]


def test_slurm_train_job_smaller_than_a_node_asks_for_its_gpus_only(tmp_path):
    result, argv, _ = _run_slurm_train(tmp_path, ["p", "j", TOY, "wd"], GPUS="2")
    assert result.returncode == 0, result.stderr
    srun_opts, _ = _split(argv)
    assert {"--gres=gpu:2", "--ntasks=2", "--ntasks-per-node=2"} <= set(srun_opts)


@pytest.mark.parametrize("env", [{"GPUS": "12", "GPUS_PER_NODE": "8"}, {"GPUS": "0"}, {"CPUS_PER_TASK": "five"}])
def test_slurm_train_rejects_bad_counts_before_queueing(tmp_path, env):
    result, argv, _ = _run_slurm_train(tmp_path, ["p", "j", TOY, "wd"], **env)
    assert result.returncode != 0
    assert "error" in result.stderr
    assert argv is None, "srun must not run"


def test_slurm_train_checks_the_batch_for_the_world_before_srun(tmp_path):
    result, argv, _ = _run_slurm_train(tmp_path, ["p", "j", TOY, "wd"], GPUS="3")
    assert result.returncode == 2 and argv is None, "srun must not run"
    assert result.stderr.strip().splitlines() == [
        "config error: train_cfg.batch_size: 128 is not divisible by the world size 3"]


def test_dist_train_checks_the_batch_for_the_world_before_torchrun(tmp_path):
    """A batch that does not divide under torchrun: one line from the launcher, no workers, no ChildFailedError."""
    result = subprocess.run(["bash", str(ROOT / "tools" / "dist_train.sh"), TOY, "3", "--work-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "NNODES": "1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "config error: train_cfg.batch_size: 128 is not divisible by the world size 3"]
    assert not (tmp_path / "train.log").exists()
