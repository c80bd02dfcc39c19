"""Run the real tools in subprocesses, as a user would."""

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = str(ROOT / "tests" / "configs" / "toy_small.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    e.pop("RANK", None)
    e.pop("WORLD_SIZE", None)
    return e


def train_cmd(config: str, work_dir: Path, nproc: int = 1, options: tuple[str, ...] = (),
              extra: tuple[str, ...] = ()) -> list[str]:
    tool = [str(ROOT / "tools" / "train.py"), config, "--work-dir", str(work_dir)]
    if options:
        tool += ["--cfg-options", *options]
    tool += list(extra)
    if nproc == 1:
        return [sys.executable, *tool]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()), *tool, "--launcher", "pytorch"]


def run(cmd: list[str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def train(config: str, work_dir: Path, nproc: int = 1, options: tuple[str, ...] = (),
          extra: tuple[str, ...] = (), check: bool = True) -> subprocess.CompletedProcess:
    return run(train_cmd(config, work_dir, nproc, options, extra), check=check)


def export(ckpt: Path, out: Path | None = None) -> dict:
    """Consolidated weights of a checkpoint, keyed as tools/export_checkpoint.py writes them
    ('model.<param>', 'ema.<average>.<param>'). In-process: the tool itself is tested in tests/e2e."""
    from diffscale.engine.export import flat_weights

    return flat_weights(ckpt)[0]


def last_checkpoint(work_dir: Path) -> Path:
    """The checkpoint work_dir/last_checkpoint names (a path relative to the work_dir)."""
    return Path(work_dir) / (Path(work_dir) / "last_checkpoint").read_text().strip()


def max_abs_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b), set(a) ^ set(b)
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)
