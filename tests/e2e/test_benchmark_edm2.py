"""tools/benchmark.py --suite edm2_step edm2_gpu as a user runs it (smallest settings), and the GPU suite's
device-independent parts on the CPU."""

import argparse
import json
import sys

import pytest
import torch

from tests.helpers import ROOT, run
from tools.benchmarks import edm2


def test_edm2_suites_write_consistent_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = run([sys.executable, str(ROOT / "tools/benchmark.py"), "--suite", "edm2_step", "edm2_gpu",
                "--edm2-batch", "1", "--edm2-images", "8", "--edm2-workers", "0", "--edm2-steps", "1",
                "--edm2-rounds", "1", "--edm2-warmup", "1", "--out", str(out)], timeout=120)
    step = json.loads(out.read_text())["edm2_step"]
    assert step["preset"] == "tiny-xxs" and step["batch"] == 1 and step["precision"] == "fp32"
    assert step["params_M"] == pytest.approx(31.10, rel=1e-3)  # the published count
    assert step["ratio"] == pytest.approx(step["trainer_ms_per_step"] / step["bare_ms_per_step"], rel=1e-9)
    assert step["img_per_s"] == pytest.approx(1e3 / step["trainer_ms_per_step"], rel=1e-9)
    assert step["bare_img_per_s"] == pytest.approx(1e3 / step["bare_ms_per_step"], rel=1e-9)
    extras_ms = step["force_wn_ms"] + step["grad_norm_check_ms"]
    assert step["ratio_from_extras"] == pytest.approx(1 + extras_ms / step["bare_ms_per_step"], rel=1e-9)
    assert extras_ms > 0 and step["ema_ms_per_step"] > 0
    assert "edm2_step  ratio" in proc.stdout and "train:" not in proc.stderr  # the table; no progress bar
    gpu = json.loads(out.read_text())["edm2_gpu"]
    if not torch.cuda.is_available():
        assert gpu == {"skipped": "no CUDA device"}


def test_peak_lookup_and_override():
    assert edm2.peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert edm2.peak_flops("NVIDIA H100 PCIe") == 756e12  # not the SXM figure: the more specific key wins
    assert edm2.peak_flops("NVIDIA H200") == 989.4e12
    assert edm2.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert edm2.peak_flops("NVIDIA GeForce GTX 1080") is None
    assert edm2.peak_flops("NVIDIA GeForce GTX 1080", override_tflops=100.0) == 100e12


SMALL_NET = dict(channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,), channels_per_head=16)


def test_train_flops_are_three_forwards_per_image():
    from diffscale.diffusion.edm import EDM2Precond
    from diffscale.evaluation.flops import forward_flops
    from diffscale.models.edm2_unet import EDM2UNet

    model = EDM2Precond(EDM2UNet("tiny-xxs", img_resolution=16, **SMALL_NET))
    forward_3 = forward_flops(model, (torch.randn(3, 3, 16, 16), torch.ones(3), torch.zeros(3, dtype=torch.long)))
    assert edm2.train_flops_per_image("tiny-xxs", 16, **SMALL_NET) == 3 * forward_3 / 3


@pytest.mark.parametrize("channels_last", [False, True])
def test_gpu_training_step_runs_on_cpu(channels_last):
    """The edm2_gpu step (bf16 autocast, EDM2Precond + EDMLoss + Adam) on a small net on the CPU, eager."""
    t = edm2.time_training("tiny-xxs", 2, torch.device("cpu"), compile_model=False, channels_last=channels_last,
                           steps=1, warmup=1, img_resolution=16, **SMALL_NET)
    assert t["step_s"] > 0 and t["first_step_s"] > 0


def test_gpu_suite_skips_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the suite runs for real")
    args = argparse.Namespace(edm2_gpu_preset="tiny-xs", edm2_gpu_batch=256, edm2_gpu_steps=1, edm2_gpu_warmup=1,
                              edm2_peak_tflops=None)
    assert edm2.bench_gpu(args) == {"skipped": "no CUDA device"}


def test_gpu_suite_assembles_figures(monkeypatch):
    """bench_gpu's bookkeeping without a GPU: a fake device and step timings; one variant fails and is reported
    while the others still run."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(edm2, "train_flops_per_image", lambda preset: 270e9)

    def fake_time_training(preset, batch, device, compile_model, channels_last, steps, warmup):
        if compile_model and channels_last:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
        return {"step_s": 0.5 if channels_last else 0.25, "first_step_s": 60.0 if compile_model else 1.0}

    monkeypatch.setattr(edm2, "time_training", fake_time_training)
    args = argparse.Namespace(edm2_gpu_preset="tiny-xs", edm2_gpu_batch=256, edm2_gpu_steps=1, edm2_gpu_warmup=1,
                              edm2_peak_tflops=None)
    r = edm2.bench_gpu(args)
    assert r["gpu"] == "NVIDIA H100 80GB HBM3" and r["peak_tflops"] == pytest.approx(989.4)
    assert r["train_gflops_per_img"] == pytest.approx(270.0)
    assert r["eager_img_per_s"] == pytest.approx(1024.0) and r["eager_cl_img_per_s"] == pytest.approx(512.0)
    assert r["eager_mfu"] == pytest.approx(270e9 * 256 / 0.25 / 989.4e12)
    assert r["compiled_first_step_s"] == 60.0 and r["compiled_graph_breaks"] == 0 and r["eager_peak_mem_gib"] == 3.0
    assert "eager_graph_breaks" not in r
    assert r["compiled_cl_error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert not any(k.startswith("compiled_cl_") and k != "compiled_cl_error" for k in r)
    args.edm2_peak_tflops = 500.0
    assert edm2.bench_gpu(args)["eager_mfu"] == pytest.approx(270e9 * 256 / 0.25 / 500e12)
