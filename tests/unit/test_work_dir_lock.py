"""One run per work_dir: the lock refuses a live holder with one line, takes over a dead one's with a warning,
and its holder notices when it was taken over."""

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from diffscale.engine.work_dir_lock import LOCK, WorkDirBusy, WorkDirLock
from tests.helpers import ROOT, SMALL, env


def plant(work_dir, **fields) -> None:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "token": "someone-else", "started": time.time(),
              "heartbeat": time.time(), **fields}
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / LOCK).write_text(json.dumps(record))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it (PIDs are not reused this fast)


def test_acquire_writes_the_holder_and_release_removes_it(tmp_path):
    lock = WorkDirLock(tmp_path)
    lock.acquire()
    record = json.loads((tmp_path / LOCK).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    lock.release()
    assert not (tmp_path / LOCK).exists()


def test_a_live_holder_stops_the_new_run_naming_it(tmp_path):
    plant(tmp_path)  # this very process, alive, under another token
    with pytest.raises(WorkDirBusy) as info:
        WorkDirLock(tmp_path).acquire()
    message = str(info.value)
    assert f"host {socket.gethostname()} PID {os.getpid()}" in message and "\n" not in message
    assert json.loads((tmp_path / LOCK).read_text())["token"] == "someone-else"  # left alone


@pytest.mark.parametrize("holder", ["dead_pid", "stale_heartbeat_elsewhere", "unreadable"])
def test_a_dead_holders_lock_is_taken_over_with_a_warning(tmp_path, caplog, holder):
    if holder == "dead_pid":
        plant(tmp_path, pid=dead_pid())
    elif holder == "stale_heartbeat_elsewhere":
        plant(tmp_path, host="another-node", heartbeat=time.time() - 3600)
    else:
        (tmp_path / LOCK).write_bytes(b"\xff\x00")
    logging.getLogger("diffscale").propagate = True
    lock = WorkDirLock(tmp_path)
    with caplog.at_level("WARNING", logger="diffscale"):
        lock.acquire()
    try:
        assert "taking it over" in caplog.text
        assert json.loads((tmp_path / LOCK).read_text())["token"] == lock.token
    finally:
        lock.release()


def test_a_fresh_heartbeat_on_another_host_counts_as_live(tmp_path):
    plant(tmp_path, host="another-node", pid=1, heartbeat=time.time() - 5)
    with pytest.raises(WorkDirBusy, match="host another-node PID 1"):
        WorkDirLock(tmp_path).acquire()


def test_the_holder_notices_a_takeover_and_its_heartbeat_moves(tmp_path):
    lock = WorkDirLock(tmp_path, heartbeat_s=0.05)
    lock.acquire()
    first = json.loads((tmp_path / LOCK).read_text())["heartbeat"]
    time.sleep(0.3)
    assert json.loads((tmp_path / LOCK).read_text())["heartbeat"] > first
    assert not lock.lost
    plant(tmp_path)  # another run took it over
    deadline = time.time() + 5
    while not lock.lost and time.time() < deadline:
        time.sleep(0.02)
    assert lock.lost
    lock.release()
    assert (tmp_path / LOCK).exists()  # not ours any more: not removed


def test_train_into_a_busy_work_dir_is_one_line_exit_2(tmp_path):
    plant(tmp_path)  # held by the test process, alive
    out = subprocess.run([sys.executable, str(ROOT / "tools/train.py"), SMALL, "--work-dir", str(tmp_path)],
                         capture_output=True, text=True, env=env(), timeout=300)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: work_dir {tmp_path} is in use by another run: host ")
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.py").exists()
