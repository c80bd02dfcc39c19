"""MDSImageStream: batch format, order, rank partition, x-flip, batch-size switches and exact mid-epoch resume."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from diffscale import registry as R
from diffscale.data.streaming import MDSImageStream, scale_images
from diffscale.errors import ConfigError
from tests.data_helpers import make_mds
from tests.helpers import ROOT, env

N = 48  # samples in the test dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(folder, x uint8 [N, 3, 4, 4], labels [N]); sample i has x[i, 0, 0, 0] == x[i, 0, 0, -1] == i."""
    return make_mds(tmp_path_factory.mktemp("mds") / "train", num_samples=N, shape=(3, 4, 4), num_classes=4)


def stream(folder, batch_gpu=5, rank=0, world_size=1, seed=1, device="cpu", **cfg) -> MDSImageStream:
    """Built as the trainer builds it: config keys in the dict, the trainer's values as defaults."""
    cfg = dict(type="MDSImageStream", path=str(folder), **{"num_workers": 0, **cfg})
    return R.build(R.DATASETS, cfg, "data.train", batch_gpu=batch_gpu, rank=rank, world_size=world_size,
                   seed=seed, device=device)


def ids_of(batch: dict) -> list[int]:
    return torch.round((batch["x"][:, 0, 0, 0] + 1) * 127.5).long().tolist()


def take(s: MDSImageStream, sizes: list[int]) -> list[dict]:
    out = []
    for b in sizes:
        s.batch_gpu = b
        out.append(next(s))
    return out


def test_batches_are_scaled_images_with_their_labels(data):
    folder, x, labels = data
    s = stream(folder, batch_gpu=7, shuffle=False)
    assert (s.num_samples, s.shape, s.resolution, s.num_classes) == (N, (3, 4, 4), 4, 4)
    assert s.class_names == ["c0", "c1", "c2", "c3"]
    batch = next(s)
    assert batch["x"].dtype == torch.float32 and batch["x"].shape == (7, 3, 4, 4)
    assert batch["label"].dtype == torch.int64 and ids_of(batch) == list(range(7))
    exact = torch.from_numpy(x[:7]).double() / 127.5 - 1
    assert (batch["x"].double() - exact).abs().max() < 2e-7 and batch["label"].tolist() == labels[:7].tolist()
    assert scale_images(np.array([0, 255], np.uint8)).tolist() == [-1, 1]


def test_epochs_cover_every_sample_and_wrap(data):
    s = stream(data[0], batch_gpu=5)
    seen = sum((ids_of(b) for b in take(s, [5] * 20)), [])  # 100 samples: two epochs of 48 and 4 more
    assert sorted(seen[:N]) == list(range(N)) and sorted(seen[N:2 * N]) == list(range(N))
    assert seen[:N] != seen[N:2 * N]  # a new permutation each epoch
    assert s.state_dict()["epoch"] == 2 and s.state_dict()["pos"] == 4
    again = sum((ids_of(b) for b in take(stream(data[0], batch_gpu=5), [5] * 20)), [])
    other = sum((ids_of(b) for b in take(stream(data[0], batch_gpu=5, seed=2), [5] * 20)), [])
    assert again == seen and other != seen


@pytest.mark.parametrize("world_size", [3, 5])
def test_ranks_take_disjoint_shares(data, world_size):
    per_rank = N // world_size
    shares = [sum((ids_of(b) for b in take(stream(data[0], batch_gpu=per_rank, rank=r, world_size=world_size),
                                           [per_rank])), []) for r in range(world_size)]
    union = set().union(*map(set, shares))
    assert len(union) == per_rank * world_size  # pairwise disjoint
    assert len(union) == N or N % world_size  # covering, up to the N mod W left out of this epoch


def test_xflip_is_a_fair_deterministic_coin(data):
    folder, x, _ = data
    s = stream(folder, batch_gpu=N, xflip=True)
    flipped = []
    for batch in take(s, [N] * 4):
        ids = ids_of(batch)
        orig = torch.from_numpy(scale_images(x[ids]))
        is_flipped = [torch.equal(batch["x"][i], orig[i].flip(-1)) for i in range(N)]
        assert all(f or torch.equal(batch["x"][i], orig[i]) for i, f in enumerate(is_flipped))
        flipped.append(dict(zip(ids, is_flipped, strict=True)))
    share = np.mean([f for epoch in flipped for f in epoch.values()])
    assert 0.35 < share < 0.65
    assert flipped[0] != flipped[1]  # redrawn each epoch
    again = stream(folder, batch_gpu=N, xflip=True)
    assert torch.equal(next(again)["x"], stream(folder, batch_gpu=N, xflip=True).__next__()["x"])


def test_batch_switch_and_resume_equal_the_uninterrupted_run(data):
    """Workers prefetch ahead; the state is still the cursor after the last batch handed out, and the order does
    not depend on the batch sizes: batches [4, 4, 20, 20, 4, 50] concatenate to the same stream."""
    sizes = [4, 4, 20, 20, 4, 50]
    straight, states = stream(data[0], xflip=True, num_workers=2), []
    batches = []
    for b in sizes:
        batches += take(straight, [b])
        states.append(straight.state_dict())
    straight.close()
    assert [len(b["label"]) for b in batches] == sizes
    single = next(stream(data[0], batch_gpu=sum(sizes), xflip=True))
    assert torch.equal(torch.cat([b["x"] for b in batches]), single["x"])
    for k in range(1, len(sizes)):
        resumed = stream(data[0], batch_gpu=99, xflip=True)
        resumed.load_state_dict(states[k - 1])
        for expected, got in zip(batches[k:], take(resumed, sizes[k:]), strict=True):
            assert torch.equal(got["x"], expected["x"]) and torch.equal(got["label"], expected["label"])


def test_float_latents_are_returned_as_stored(tmp_path):
    folder, x, _ = make_mds(tmp_path / "lat", num_samples=6, shape=(4, 2, 2), num_classes=2, dtype="float16")
    batch = next(stream(folder, batch_gpu=6, shuffle=False))
    assert batch["x"].dtype == torch.float32 and torch.equal(batch["x"], torch.from_numpy(x).float())


def test_remote_path_is_cached_locally(data, tmp_path):
    # A plain directory as the "remote" exercises mosaic's downloader and our cache without a network.
    cached = stream(data[0], batch_gpu=8, local=str(tmp_path / "cache"))
    direct = stream(data[0], batch_gpu=8)
    for _ in range(3):
        assert torch.equal(next(cached)["x"], next(direct)["x"])
    assert (tmp_path / "cache" / "index.json").is_file() and list((tmp_path / "cache").glob("shard.*.mds"))


def test_errors_name_the_config_key(data, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.train\.path: no MDS dataset at '.*nowhere'.*convert_dataset\.py"):
        stream(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"data\.train\.local"):
        stream("s3://bucket/tiny")
    s = stream(data[0])
    with pytest.raises(ValueError, match="cannot resume"):
        s.load_state_dict({**s.state_dict(), "num_samples": N + 1})


def test_workers_survive_sigterm_and_exit_with_the_process(data):
    """A scheduler's SIGTERM reaches the whole process group: the workers must survive it (the trainer finishes
    its step and saves) and still exit with the main process rather than hang it."""
    code = f"""
import os, signal, sys, time
sys.path.insert(0, {str(ROOT)!r})
from diffscale.data.streaming import MDSImageStream
signal.signal(signal.SIGTERM, lambda *args: None)  # as the trainer: note it, finish the step
stream = MDSImageStream({str(data[0])!r}, batch_gpu=8, num_workers=2)
next(stream)
os.killpg(0, signal.SIGTERM)
time.sleep(0.5)
for _ in range(8):
    next(stream)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=40,
                          start_new_session=True)  # its own process group: the signal stays inside
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches(data):
    """On CUDA the workers hand over uint8 (pinned) and the device scales: the same numbers as the CPU path."""
    cpu = take(stream(data[0], xflip=True, num_workers=2), [8, 40, 8])
    gpu = take(stream(data[0], xflip=True, num_workers=2, device="cuda"), [8, 40, 8])
    for a, b in zip(cpu, gpu, strict=True):
        assert b["x"].is_cuda and b["label"].is_cuda
        assert torch.equal(a["x"], b["x"].cpu()) and torch.equal(a["label"], b["label"].cpu())
