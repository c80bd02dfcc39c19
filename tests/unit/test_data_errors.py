"""A bad dataset is one line naming the shard (and the record at fault), from the main process or the loader's
workers alike; our writers record content hashes, which the conversion read-back and `verify=True` check."""

import json
import shutil
import subprocess
import sys

import pytest

from diffscale.data.mds import INDEX_FILE, file_hash
from diffscale.data.streaming import MDSImageStream
from diffscale.errors import DataError
from tests.data_helpers import make_mds
from tests.helpers import ROOT, env


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder, x, labels = make_mds(tmp_path_factory.mktemp("mds") / "data", num_samples=16, num_classes=4)
    return folder


@pytest.fixture
def copy(dataset, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(dataset, target)
    shard = target / json.loads((target / INDEX_FILE).read_text())["shards"][0]["raw_data"]["basename"]
    return target, shard


def first_batch(path, **kw):
    stream = MDSImageStream(str(path), batch_gpu=16, shuffle=False, **kw)
    try:
        return next(stream)
    finally:
        stream.close()


def test_shards_carry_content_hashes_that_verify(dataset):
    entry = json.loads((dataset / INDEX_FILE).read_text())["shards"][0]["raw_data"]
    assert set(entry["hashes"]) == {"sha1", "xxh64"}
    import hashlib

    shard = dataset / entry["basename"]
    assert entry["hashes"]["sha1"] == hashlib.sha1(shard.read_bytes()).hexdigest()  # as mosaic computes it
    assert file_hash(shard, "xxh64") == entry["hashes"]["xxh64"]
    assert first_batch(dataset, verify=True, num_workers=0)["x"].shape == (16, 3, 8, 8)


def test_a_corrupted_payload_is_caught_by_verify(copy):
    folder, shard = copy
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # an image byte: the header still agrees, only the hash notices
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"^data.train.verify: shard {shard}: content hash xxh64 \w+ differs"):
        MDSImageStream(str(folder), batch_gpu=4, verify=True)
    # Built from a config (the registry's build turns a constructor's ValueError into a ConfigError naming its
    # arguments): a DataError stays itself, the same one line.
    from diffscale.registry import DATASETS, build

    with pytest.raises(DataError, match=rf"^data.train.verify: shard {shard}: content hash xxh64 \w+ differs"):
        build(DATASETS, dict(type="MDSImageStream", path=str(folder), verify=True), "data.train", batch_gpu=4)


@pytest.mark.parametrize("damage", ["header", "truncated"])
def test_a_damaged_shard_read_by_workers_is_one_line(copy, damage):
    folder, shard = copy
    data = bytearray(shard.read_bytes())
    if damage == "header":
        data[4:8] = (10**6).to_bytes(4, "little")  # the first sample offset
        shard.write_bytes(bytes(data))
        expected = rf"^data.train: shard {shard}: corrupted header"
    else:
        shard.write_bytes(bytes(data[: len(data) // 2]))
        expected = rf"^data.train: shard {shard}: truncated \(\d+ bytes\), .*index.json says \d+ bytes$"
    with pytest.raises(DataError, match=expected) as info:
        first_batch(folder, num_workers=2)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


def test_a_label_outside_the_classes_names_shard_and_record(copy):
    folder, shard = copy
    meta = json.loads((folder / "diffscale.json").read_text())
    meta["class_names"] = meta["class_names"][:2]  # labels 2 and 3 are now out of range
    (folder / "diffscale.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=rf"^data.train: shard {shard} record 2 \(sample 2\): label 2 is outside "
                                        r"\[0, 2\)"):
        first_batch(folder, num_workers=2)


def test_train_on_a_truncated_shard_is_one_line_exit_2(copy, tmp_path):
    """Through tools/train.py, loader workers on: no worker traceback, no second line."""
    folder, shard = copy
    shard.write_bytes(shard.read_bytes()[:100])
    config = tmp_path / "cfg.py"
    config.write_text(
        f"_base_ = [{str(ROOT / 'configs/ajest/edm2_xs_tiny_baseline.py')!r}]\n"
        f"data = dict(train=dict(path={str(folder)!r}, num_workers=2))\n"
        "model = dict(net=dict(channels=16, img_resolution=8, label_dim=4, num_blocks=1, channels_per_head=16))\n"
        "train_cfg = dict(batch_size=4, batch_gpu=4, max_iters=1, precision='fp32')\n"
        "hooks = []\n")
    out = subprocess.run([sys.executable, str(ROOT / "tools/train.py"), str(config), "--work-dir",
                          str(tmp_path / "work")], capture_output=True, text=True, env=env(), timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    listed = json.loads((folder / INDEX_FILE).read_text())["shards"][0]["raw_data"]["bytes"]
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert errors == [f"error: data.train: shard {shard}: truncated (100 bytes), {folder / INDEX_FILE} says "
                      f"{listed} bytes"]
