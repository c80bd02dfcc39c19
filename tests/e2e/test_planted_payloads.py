"""No checkpoint file may run code when it is read: a pickle planted in every file of every strategy's checkpoint
(its manifest rewritten to match, as an attacker would) is refused by resume, export and reference loading, with
one line naming the file, and its command never runs. The checkpoints are of the three-part DMD2 toy, so per-part
files and a frozen part's file (`real_score`, as a frozen VAE decoder part is written) are among them.

The payload is `os.system("touch MARKER")` as a pickle reduce: torch files get it through torch.save, DCP's
`.metadata` as a plain pickle, and DCP's data file as every item it stores (tensors and bytes alike)."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from diffscale.engine import checkpoint as ckpt
from diffscale.engine.export import flat_weights
from diffscale.engine.reference import load_weights, resolve_checkpoint
from diffscale.errors import CheckpointError
from tests.helpers import ROOT, SMALL, env, last_checkpoint, run

STRATEGIES = {"ddp": (), "fsdp": ("strategy.type=fsdp",),
              "deepspeed": ("strategy.type=deepspeed", "strategy.zero_stage=2")}


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def loaded_files(ckpt_dir: Path) -> list[str]:
    """Every file a reader opens: all but the manifest (JSON) and DeepSpeed's copies of its recovery scripts
    (zero_to_fp32.py and the like: Python that nothing imports)."""
    return sorted(p.relative_to(ckpt_dir).as_posix() for p in ckpt_dir.rglob("*")
                  if p.is_file() and p.name != ckpt.MANIFEST and p.suffix != ".py")


def remanifest(ckpt_dir: Path) -> None:
    """What an attacker does after planting: a manifest that matches the files again."""
    entries = {}
    for p in sorted(ckpt_dir.rglob("*")):
        if p.is_file() and p.name != ckpt.MANIFEST:
            entries[p.relative_to(ckpt_dir).as_posix()] = {"bytes": p.stat().st_size,
                                                           "crc32": zlib.crc32(p.read_bytes())}
    (ckpt_dir / ckpt.MANIFEST).write_text(json.dumps(entries))


def plant(ckpt_dir: Path, rel: str, marker: Path) -> None:
    path = ckpt_dir / rel
    if path.name == ".metadata":
        path.write_bytes(pickle.dumps(Payload(marker)))
    elif path.suffix == ".distcp":
        from diffscale.engine.safe_load import dcp_reader

        metadata = dcp_reader(path.parent).read_metadata()  # the genuine metadata, read safely
        blob = bytearray()
        buf = __import__("io").BytesIO()
        torch.save(Payload(marker), buf)
        for index, info in metadata.storage_data.items():
            if info.relative_path == path.name:  # every item this file stores becomes the payload
                metadata.storage_data[index] = type(info)(path.name, len(blob), len(buf.getvalue()))
                blob += buf.getvalue()
        path.write_bytes(bytes(blob))
        (path.parent / ".metadata").write_bytes(pickle.dumps(metadata))  # genuine records, new offsets
    else:
        torch.save(Payload(marker), path)
    remanifest(ckpt_dir)


DMD2 = str(ROOT / "tests" / "configs" / "dmd2_small.py")
PARTS = ("generator", "fake_score", "real_score")


def dmd2_options(teacher: Path) -> list[str]:
    return ["train_cfg.max_iters=2", *(f"parts.{p}.init.checkpoint={teacher}" for p in PARTS)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A 2-step single-process DMD2 toy run under each strategy (started together), its three parts initialised
    from a 1-step toy EDM run."""
    root = tmp_path_factory.mktemp("runs")
    run([sys.executable, str(ROOT / "tools/train.py"), SMALL, "--work-dir", str(root / "teacher"), "--cfg-options",
         "train_cfg.max_iters=1"])
    procs = {}
    for name, options in STRATEGIES.items():
        cmd = [sys.executable, str(ROOT / "tools/train.py"), DMD2, "--work-dir", str(root / name), "--cfg-options",
               *dmd2_options(root / "teacher"), *options]
        procs[name] = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       text=True)
    for proc in procs.values():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    return {name: last_checkpoint(root / name) for name in STRATEGIES}


def source_name(case: dict) -> str:
    return Path(case["ckpt"]).name  # the error names the file under it: print what follows


RESUME_ALL = """
import json, sys
from diffscale.config import load_config
from diffscale.engine.trainer import Trainer
from diffscale.utils.dist import init_distributed
dist_info = init_distributed("none", need_group=True)
results = {}
for case in json.loads(sys.argv[1]):
    cfg = load_config(case["config"], case["options"], case["work_dir"])
    trainer = Trainer(cfg, dist_info, resume=case["ckpt"])
    try:
        trainer._resume()
        results[case["ckpt"]] = None
    except Exception as exc:
        results[case["ckpt"]] = f"{type(exc).__name__}: {exc}"
    finally:
        trainer.release()
print(json.dumps(results))
"""


def test_planted_payloads_are_refused_everywhere(checkpoints, tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    cases, planted = [], []
    for name, source in checkpoints.items():
        for rel in loaded_files(source):
            work = tmp_path / f"{name}-{rel.replace('/', '_')}"
            target = work / "checkpoints" / source.name
            shutil.copytree(source, target)
            plant(target, rel, marker)
            assert ckpt.verify(target) is None  # the manifest no longer protects: the readers must
            planted.append((name, rel, target, work))
            teacher = source.parents[2] / "teacher"
            cases.append({"config": DMD2, "options": [*dmd2_options(teacher), "train_cfg.max_iters=3",
                                                      *STRATEGIES[name]],
                          "work_dir": str(tmp_path / f"resume-{len(cases)}"), "ckpt": str(target)})
    planted_files = {(n, rel) for n, rel, *_ in planted}
    assert {("ddp", f"{p}.pt") for p in PARTS} | {("deepspeed", "real_score.pt")} <= planted_files

    # Export and reference loading (part init, curation reference, guide, tools/test.py) in this process. They read
    # every file but the per-rank state (data order and noise, which only resume needs).
    for name, rel, target, work in planted:
        for load in (lambda t=target: flat_weights(t),
                     lambda w=work: load_weights(resolve_checkpoint(w), None, part="generator")):
            if rel.startswith("rank_"):
                load()  # not opened
                continue
            with pytest.raises(CheckpointError) as info:
                load()
            message = str(info.value)
            assert "\n" not in message and ("refused" in message or "unreadable" in message), (name, rel, message)
    # Resume: every planted checkpoint in one process (a fresh Trainer each).
    out = run([sys.executable, "-c", RESUME_ALL, json.dumps(cases)])
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for (name, rel, _, _), case in zip(planted, cases, strict=True):
        error = results[case["ckpt"]]
        assert error is not None and error.startswith("CheckpointError") and "\n" not in error, (name, rel, error)
        print(f"{name:9s} {rel:70s} {error.split(source_name(case), 1)[-1][:120]}")
    assert not marker.exists(), "a planted payload ran"


def test_the_same_payload_does_run_under_plain_pickle(tmp_path):
    """The payload is live: loaded without the guard it runs (so the test above can fail)."""
    marker = tmp_path / "RAN"
    path = tmp_path / "evil.pt"
    torch.save(Payload(marker), path)
    torch.load(path, weights_only=False)
    assert marker.exists()
