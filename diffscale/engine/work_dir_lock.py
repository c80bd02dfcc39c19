"""One run per work_dir: a lock file holding its holder's host, PID and a heartbeat.

Why: `kill -9` on torchrun leaves its workers running (torch starts each in its own session); such orphans went
on writing checkpoints into a work_dir that a resumed run was using. Rank 0 takes `work_dir/run.lock` before
the run writes anything there and refreshes its heartbeat every `heartbeat_s` from a daemon thread. A new run
finding the lock:
- held by a live process (same host and its PID alive, or another host with a heartbeat younger than `stale_s`):
  stops with one line naming the holder;
- left by a dead one (same host, PID gone; or a heartbeat older than `stale_s`): takes it over with a warning.
The holder's thread notices when its lock was taken over (`lost`); the trainer then refuses to publish another
checkpoint. Stop a run cleanly with SIGTERM to torchrun (or scancel): it saves and releases the lock.
"""

import atexit
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from diffscale.errors import ConfigError

LOCK = "run.lock"
log = logging.getLogger("diffscale")


class WorkDirBusy(ConfigError):
    """Another live run holds the work_dir."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WorkDirLock:
    def __init__(self, work_dir: str | Path, heartbeat_s: float = 10.0, stale_s: float = 60.0):
        self.path = Path(work_dir) / LOCK
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.token = uuid.uuid4().hex
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                       "started": time.time(), "heartbeat": time.time()}
        self.lost = False  # set by the heartbeat thread when another run took the lock over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ reading the lock
    def _read(self) -> dict | None:
        try:
            record = json.loads(self.path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}  # unreadable: treated as stale
        return record if isinstance(record, dict) else {}

    def _live(self, holder: dict) -> bool:
        try:
            host, pid, heartbeat = str(holder["host"]), int(holder["pid"]), float(holder["heartbeat"])
        except (KeyError, TypeError, ValueError):
            return False
        if host == self.record["host"]:
            return _pid_alive(pid)
        return time.time() - heartbeat < self.stale_s

    @staticmethod
    def describe(holder: dict) -> str:
        age = time.time() - float(holder.get("heartbeat", 0) or 0)
        return f"host {holder.get('host')} PID {holder.get('pid')} (heartbeat {age:.0f} s ago)"

    # ------------------------------------------------------------------ taking and keeping it
    def _write(self) -> None:
        self.record["heartbeat"] = time.time()
        tmp = self.path.with_name(f"{LOCK}.{self.token}.tmp")
        tmp.write_text(json.dumps(self.record) + "\n")
        os.replace(tmp, self.path)

    def acquire(self) -> None:
        """Take the lock or raise WorkDirBusy naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)
        except FileExistsError:
            holder = self._read()
            if holder and holder.get("token") != self.token and self._live(holder):
                raise WorkDirBusy(f"work_dir {self.path.parent} is in use by another run: {self.describe(holder)}; "
                                  f"stop it (SIGTERM to its torchrun) or use another --work-dir") from None
            log.warning("work_dir lock %s was left by a run that is gone (%s): taking it over", self.path,
                        self.describe(holder) if holder else "unreadable lock file")
        self._write()
        self._thread = threading.Thread(target=self._beat, name="work_dir-lock", daemon=True)
        self._thread.start()
        atexit.register(self.release)  # also when a tool builds a Trainer and never calls train()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = self._read()
            if not holder or holder.get("token") != self.token:
                self.lost = True
                log.error("work_dir lock %s was taken over by %s; this run will not write another checkpoint",
                          self.path, self.describe(holder) if holder else "nobody (the file is gone)")
                return
            try:
                self._write()
            except OSError as exc:  # a full or flaky disk: keep training, try again next beat
                log.warning("work_dir lock %s: heartbeat not written (%s)", self.path, exc)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self._read()
        if holder and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
