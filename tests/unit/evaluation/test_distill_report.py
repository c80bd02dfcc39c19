"""The distillation report's pieces (evaluation/distill_report.py): its evaluation reproduces toy_metrics, NFE
is counted, Heun with one step is one Euler step, finished runs are recognised, the table is formatted."""

import pytest
import torch

from diffscale.config import load_config
from diffscale.data.toy import tree_mixture
from diffscale.diffusion.edm import EDMPrecond
from diffscale.evaluation import distill_report as D
from diffscale.evaluation.toy_metrics import denoiser_metrics, sample_metrics, toy_metrics
from diffscale.evaluation.toy_report import markdown_table
from diffscale.sampling.edm_heun import EDMHeunSampler


def toy_net() -> EDMPrecond:
    torch.manual_seed(0)
    return EDMPrecond(dict(type="ToyMLP", in_dim=2, num_classes=2, hidden_dim=16, num_layers=2),
                      sigma_data=0.5, label_dim=2).eval()


@pytest.fixture(scope="module")
def mixture():
    return tree_mixture()


def test_the_report_evaluation_is_toy_metrics(mixture, one_thread):
    net, sampler = toy_net(), EDMHeunSampler(num_steps=4, sigma_max=5.0)
    expected = toy_metrics(net, mixture, num_samples=256, sampler=sampler, seed=3)
    x, labels, outer, noise, z = D.eval_inputs(mixture, 256, seed=3)
    samples, nfe, seconds = D.timed_samples(sampler, net, z, labels, repeats=2)
    got = denoiser_metrics(net, mixture, x, labels, outer, noise) | sample_metrics(samples, labels, mixture)
    assert got == expected
    assert nfe == 7 and seconds > 0  # 4 Euler evaluations + 3 corrections (none at the last step)


def test_heun_with_one_step_is_one_evaluation_at_sigma_max(one_thread):
    net, z = toy_net(), torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(64) % 2
    heun = dict(sigma_min=0.002, sigma_max=5.0, rho=7.0)
    samples, nfe, _ = D.timed_samples(EDMHeunSampler(num_steps=1, **heun), net, z, labels, repeats=1)
    with torch.no_grad():
        expected = net(z * 5.0, torch.full((64,), 5.0), labels)
    assert nfe == 1 and torch.isfinite(samples).all()
    torch.testing.assert_close(samples, expected)  # x + (0 - 5) (x - D(x; 5)) / 5 = D(x; 5)
    _, nfe32, _ = D.timed_samples(EDMHeunSampler(num_steps=32, **heun), net, z, labels, repeats=1)
    assert nfe32 == 63


def test_finished_means_last_checkpoint_at_max_iters(tmp_path):
    assert not D.finished(tmp_path, 8)  # no last_checkpoint
    ckpt = tmp_path / "checkpoints" / "iter_0000008"
    (tmp_path / "last_checkpoint").write_text(f"{ckpt}\n")
    assert not D.finished(tmp_path, 8)  # points at nothing
    ckpt.mkdir(parents=True)
    assert D.finished(tmp_path, 8) and not D.finished(tmp_path, 16)


def test_dmd2_options_initialise_every_part_from_the_teacher(tmp_path):
    teacher = tmp_path / "teacher"
    cfg = load_config(str(D.DMD2_CONFIG), D.dmd2_options(teacher, iters=40, batch=256, lr=5e-4, seed=1))
    assert {p: cfg.parts[p]["init"]["checkpoint"] for p in D.INIT_PARTS} == {p: str(teacher) for p in D.INIT_PARTS}
    assert (cfg.train_cfg["max_iters"], cfg.train_cfg["batch_size"], cfg.train_cfg["batch_gpu"]) == (40, 256, 256)
    assert cfg.parts["generator"]["optimizer"]["lr"] == cfg.parts["fake_score"]["optimizer"]["lr"] == 5e-4
    default = load_config(str(D.DMD2_CONFIG), D.dmd2_options(teacher, None, None, None, seed=0))
    assert default.train_cfg["max_iters"] == 5000 and default.parts["generator"]["optimizer"]["lr"] == 1e-3


def test_write_config_drops_the_plot_hook_and_detects_a_change(tmp_path):
    path, iters, changed = D.write_config("teacher", D.TEACHER_CONFIG, D.teacher_options(64, 0), tmp_path)
    assert (iters, changed) == (64, True) and "ToyPlotHook" not in path.read_text() and "EMAHook" in path.read_text()
    assert D.write_config("teacher", D.TEACHER_CONFIG, D.teacher_options(64, 0), tmp_path)[2] is False
    assert D.write_config("teacher", D.TEACHER_CONFIG, D.teacher_options(64, 1), tmp_path)[2] is True
    assert D.write_config("teacher", D.TEACHER_CONFIG, D.teacher_options(None, 1), tmp_path)[1] == 4096


def test_table_against_a_hand_formatted_one():
    rows = [{"name": "teacher Heun-32", "nfe": 63, "support_share": 0.45649, "class_accuracy": 0.99951,
             "sample_seconds": 0.31249},
            {"name": "generator raw", "nfe": 1, "support_share": 0.4, "class_accuracy": 1.0, "sample_seconds": 0.0015}]
    assert markdown_table(D.table_rows(rows)) == (
        "| model and sampler | NFE | support share | class accuracy | sample s |\n"
        "| --- | --- | --- | --- | --- |\n"
        "| teacher Heun-32 | 63 | 0.456 | 1.000 | 0.312 |\n"
        "| generator raw | 1 | 0.400 | 1.000 | 0.002 |\n")
