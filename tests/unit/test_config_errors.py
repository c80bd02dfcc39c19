"""Bad configs fail at start-up with one line naming the key and what was expected, exit code 2."""

import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT, SMALL, env

sys.path.insert(0, str(ROOT / "tools"))
import train as train_tool  # noqa: E402


def run_main(capsys, *argv: str) -> tuple[int, str]:
    code = train_tool.main([*argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("options", "expected"), [
    (["model.net.type=ToyMLPP"], "model.net.type: 'ToyMLPP' is not in the model registry; closest: ToyMLP"),
    (["model.type=EDMPrecnd"],
     "model.type: 'EDMPrecnd' is not in the model registry; closest: EDMPrecond, EDM2Precond, EDM2UNet"),
    (["train_cfg.max_iters='ten'"], "train_cfg.max_iters: expected int, got str 'ten'"),
    (["train_cfg.max_iters=True"], "train_cfg.max_iters: expected int, got bool True"),
    (["train_cfg.precision=fp8"], "train_cfg.precision: expected one of ('fp32', 'bf16', 'fp16'), got 'fp8'"),
    (["strategy.type=horovod"], "strategy.type: expected one of ('ddp', 'fsdp', 'deepspeed'), got 'horovod'"),
    (["strategy.zero_stage=4", "strategy.type=deepspeed"], "strategy.zero_stage: expected 1, 2 or 3, got 4"),
    (["train_cfg.max_iter=5"], "--cfg-options train_cfg.max_iter: unknown key 'max_iter' in 'train_cfg'; "
                               "closest: max_iters, max_nonfinite_steps, log_interval"),
    (["trian_cfg.seed=1"], "--cfg-options trian_cfg.seed: unknown key 'trian_cfg'"),
    (["train_cfg.batch_size=100"], "train_cfg.batch_size: 100 is not a multiple of train_cfg.batch_gpu * "
                                   "world_size = 32 * 1 = 32 (batch_size == batch_gpu * accum * world_size)"),
    (["model.net.hidden_dim"], "--cfg-options 'model.net.hidden_dim': expected KEY=VALUE"),
    (["hooks=[{'type':'EMAHok'}]"], "hooks.0.type: 'EMAHok' is not in the hook registry; closest: EMAHook, EvalHook"),
])
def test_bad_option_is_one_line_exit_2(capsys, tmp_path, options, expected):
    code, err = run_main(capsys, SMALL, "--work-dir", str(tmp_path), "--cfg-options", *options)
    assert code == 2
    assert err.strip() == f"config error: {expected}"


def write_config(tmp_path, body: str) -> str:
    path = tmp_path / "bad.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_missing_required_key(capsys, tmp_path):
    cfg = write_config(tmp_path, f"""
        _base_ = ["{SMALL}"]
        train_cfg = dict(_delete_=True, max_iters=10, batch_size=64, batch_gpu=32, precision="fp32")
    """)
    code, err = run_main(capsys, cfg, "--work-dir", str(tmp_path))
    assert code == 2
    assert err.strip() == "config error: train_cfg.seed: missing required key (expected int)"


def test_unknown_constructor_argument(capsys, tmp_path):
    cfg = write_config(tmp_path, f"""
        _base_ = ["{SMALL}"]
        model = dict(net=dict(hiden_dim=32))
    """)
    code, err = run_main(capsys, cfg, "--work-dir", str(tmp_path))
    assert code == 2
    assert err.strip().startswith("config error: model.net.hiden_dim: ToyMLP takes no argument 'hiden_dim'; "
                                  "expected one of: in_dim, num_classes, hidden_dim, num_layers")


def test_missing_config_file(capsys, tmp_path):
    code, err = run_main(capsys, str(tmp_path / "nope.py"))
    assert code == 2 and "no such file" in err


def test_class_object_as_type(tmp_path):
    """A config may name the class itself instead of its registered name (mmengine allows imports in a
    config without `_base_`; the dumped, resolved config is such a file)."""
    from diffscale.config import dump, load_config
    from diffscale.registry import MODELS, build

    dump(load_config(SMALL), tmp_path / "resolved.py")
    text = (tmp_path / "resolved.py").read_text()
    (tmp_path / "resolved.py").write_text("from diffscale.models.toy_mlp import ToyMLP\n" + text +
                                          "model['net'] = dict(type=ToyMLP, hidden_dim=16)\n")
    model = build(MODELS, load_config(str(tmp_path / "resolved.py")).model, "model")
    assert model.net.inp.out_features == 16


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), SMALL, "--work-dir", str(tmp_path),
                           "--cfg-options", "optimizer.type=Adamm"], env=env(), capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["config error: optimizer.type: 'Adamm' is not in the optimizer registry; closest: Adam, RAdam, "
                     "AdamW"]


# ------------------------------------------------------------------------------- one line, never a traceback
@pytest.mark.parametrize(("body", "expected"), [
    ("x = 1 / 0\n", "ZeroDivisionError: division by zero ({path} line 1)"),
    ("_base_ = ['./does_not_exist.py']\n", "no such file '{dir}/does_not_exist.py' (a _base_ entry?)"),
    ("from mmengine.config import read_base\nwith read_base():\n    from .nothere import *\n",
     "ConfigParsingError: {dir}/nothere.py not found!"),
])
def test_a_config_that_fails_to_load_is_one_line(capsys, tmp_path, body, expected):
    path = tmp_path / "bad.py"
    path.write_text(body)
    code, err = run_main(capsys, str(path), "--work-dir", str(tmp_path / "work"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"config error: config {path}: " + expected.format(path=path, dir=tmp_path)), err


@pytest.mark.parametrize(("options", "expected"), [
    (["optimizer.lr=-1"], "optimizer.lr: expected a number > 0, got -1"),
    (["optimizer.lr=0"], "optimizer.lr: expected a number > 0, got 0"),
])
def test_a_bad_learning_rate_is_one_line(capsys, tmp_path, options, expected):
    code, err = run_main(capsys, SMALL, "--work-dir", str(tmp_path), "--cfg-options", *options)
    assert code == 2
    assert err.strip().splitlines() == [f"config error: {expected}"]


def test_a_combination_the_constructor_rejects_names_the_keys(capsys, tmp_path):
    """EDM2UNet's own ValueError (48 channels do not split into heads of 64), with the keys it was given."""
    code, err = run_main(capsys, str(ROOT / "configs/ajest/edm2_xs_tiny.py"), "--work-dir", str(tmp_path),
                         "--cfg-options", "model.net.channels=16")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("config error: model.net: EDM2UNet rejects model.net.preset='tiny-xs', "
                               "model.net.channels=16")
    assert lines[0].endswith("EDM2UNet: 48 channels do not split into heads of 64")
