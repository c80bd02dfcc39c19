"""tools/encode_latents.py under torchrun: 2 processes write bitwise the dataset 1 process writes, in input order."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.data_helpers import class_image
from tests.helpers import ROOT, env, free_port

TOOL = str(ROOT / "tools" / "encode_latents.py")


@pytest.mark.dist
def test_two_processes_write_what_one_writes(tmp_path):
    from diffscale.data.mds import INDEX_FILE, META_FILE, MDSIndex, ShardStore

    for label in range(2):  # 6 images in 3 parts of 2: rank 0 encodes parts 0 and 2, rank 1 part 1
        (tmp_path / "in" / f"c{label}").mkdir(parents=True)
        for i in range(3):
            class_image(label, i, 32 + 8 * i).save(tmp_path / "in" / f"c{label}" / f"{i}.png")
    args = ["--source", "imagefolder", "--input", str(tmp_path / "in"), "--random-vae", "--seed", "3",
            "--resolution", "32", "--batch", "2", "--shard-samples", "2", "--device", "cpu"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
              str(free_port()), TOOL, *args, "--output", str(tmp_path / "two")]
    single = [sys.executable, TOOL, *args, "--output", str(tmp_path / "one")]
    # Both at once: most of each run is importing torch, diffusers and streaming.
    procs = [subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in (launch, single)]
    outputs = []
    for cmd, proc in zip((launch, single), procs, strict=True):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{out[-2000:]}\n{err[-4000:]}"
        outputs.append(out)
    assert "on 2 process(es)" in outputs[0] and "on 1 process(es)" in outputs[1]

    read = {}
    for name in ("one", "two"):
        index, _ = MDSIndex.open(str(tmp_path / name))
        read[name] = ShardStore(index).gather(np.arange(index.num_samples))  # in index order: the input's
    assert read["one"]["label"].tolist() == [0, 0, 0, 1, 1, 1]
    for column in ("moments", "label"):
        assert read["one"][column].tobytes() == read["two"][column].tobytes()
    for name in (INDEX_FILE, META_FILE, "part_00001/shard.00000.mds"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert json.loads((tmp_path / "two" / "encode_latents.json").read_text())["complete"]
