"""Train the small toy, serve WORK_DIR/tensorboard with a real `tensorboard` server on 127.0.0.1, and read the
loss curve back over HTTP: the steps the logger wrote and the values TensorBoard's own reader sees."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import ROOT, SMALL, env, free_port, train

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
DEADLINE_S = 60.0
# Never through a proxy from the environment: the server is on loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get_json(port: int, path: str, **query: str):
    url = f"http://{HOST}:{port}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with OPENER.open(url, timeout=5) as response:
        assert response.status == 200, (url, response.status)
        return json.loads(response.read().decode())


def test_loss_curve_over_http(tmp_path):
    work_dir = tmp_path / "run"
    train(SMALL, work_dir)  # 10 steps, log_interval 2
    logdir = work_dir / "tensorboard"
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    expected = [(p.step, p.value) for p in acc.Scalars("train/loss")]
    assert [s for s, _ in expected] == [2, 4, 6, 8, 10], expected

    port = free_port()
    server_log = tmp_path / "tensorboard.log"
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", HOST, "--port", str(port),
           "--load_fast=false"]
    with open(server_log, "w") as log_file:
        server = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + DEADLINE_S
        run, series, last_error = None, [], None
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"tensorboard exited {server.returncode}:\n{server_log.read_text()[-3000:]}")
            try:
                if run is None:
                    tags = get_json(port, "/data/plugin/scalars/tags")
                    runs = [r for r, t in tags.items() if "train/loss" in t]
                    if runs:
                        assert len(runs) == 1, tags
                        run = runs[0]
                if run is not None:
                    # [[wall_time, step, value], ...]; wait until the last point (step 10) has been loaded.
                    series = get_json(port, "/data/plugin/scalars/scalars", run=run, tag="train/loss")
                    if series and series[-1][1] == 10:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:  # not listening yet
                last_error = exc
            time.sleep(0.5)
        else:
            pytest.fail(f"no complete train/loss series within {DEADLINE_S} s (run {run!r}, series {series}, "
                        f"last error {last_error!r}):\n{server_log.read_text()[-3000:]}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    assert [step for _, step, _ in series] == [2, 4, 6, 8, 10], series
    assert all(isinstance(wall, float) and wall > 0 for wall, _, _ in series), series
    # Both read the same float32 from the event file, so they agree exactly.
    assert [(step, value) for _, step, value in series] == expected, (series, expected)
