"""--cfg-options: values read as mmengine's DictAction reads them, and every constructor argument settable
(issue 15, items 2 and 3)."""

import textwrap

import pytest
from mmengine.config import Config

from diffscale.config import _parse_value, apply_options, load_config
from diffscale.errors import ConfigError
from diffscale.models.toy_mlp import ToyMLP
from tests.helpers import ROOT, SMALL

EDM2 = str(ROOT / "configs" / "ajest" / "edm2_xs_tiny.py")


@pytest.mark.parametrize(("text", "expected"), [
    ("true", True), ("false", False), ("FALSE", False), ("True", True),
    ("none", None), ("None", None),
    ("[1,2,2]", [1, 2, 2]), ("(1, 2)", (1, 2)), ("1,2,3", [1, 2, 3]), ("[]", []),
    ("[a, true, (1, none)]", ["a", True, (1, None)]), ("[(1,2),[a,b],c]", [(1, 2), ["a", "b"], "c"]),
    ("0.5", 0.5), ("-3", -3), ("'x'", "x"), ("'a,b'", "a,b"), ("{'k': 1}", {"k": 1}),
    ("/tmp/x", "/tmp/x"), ("pf_0.050", "pf_0.050"), ("a b", "a b"),
])
def test_values_as_mmengine_reads_them(text, expected):
    value = _parse_value(text)
    assert value == expected and type(value) is type(expected)


@pytest.fixture
def small() -> Config:
    return Config.fromfile(SMALL)


def test_lowercase_false_is_a_bool(tmp_path):
    cfg = load_config(SMALL, ["objective.learned_logvar=false", "train_cfg.grad_clip=none"], str(tmp_path))
    assert cfg.objective.learned_logvar is False and cfg.train_cfg.grad_clip is None


@pytest.mark.parametrize(("option", "expected"), [
    ("objective.learned_logvar=yes", "objective.learned_logvar: expected bool (true or false), got str 'yes'"),
    ("objective.learned_logvar=1", "objective.learned_logvar: expected bool (true or false), got int 1"),
    ("optimizer.amsgrad=maybe", "optimizer.amsgrad: expected bool (true or false), got str 'maybe'"),
])
def test_a_non_bool_for_a_flag_names_the_key(small, option, expected):
    with pytest.raises(ConfigError) as exc:
        apply_options(small, [option])
    assert str(exc.value) == expected


def test_work_dir_on_a_config_without_one():
    cfg = load_config(SMALL, ["work_dir=/tmp/x"])
    assert cfg.work_dir == "/tmp/x"


def test_an_argument_the_file_omits():
    cfg = Config.fromfile(EDM2)
    assert "channel_mult" not in cfg.model.net
    apply_options(cfg, ["model.net.channel_mult=[1,2,2]", "model.net.force_wn=False"])
    assert cfg.model.net.channel_mult == [1, 2, 2] and cfg.model.net.force_wn is False


def test_arguments_of_hooks_optimizer_and_a_strategy_with_kwargs(small):
    apply_options(small, ["model.net.out_dim=3", "hooks.0.interval=2", "hooks.0.name=ema2", "optimizer.eps=1e-6",
                          "strategy.find_unused_parameters=true", "strategy.anything=1"])
    assert small.model.net.out_dim == 3 and small.hooks[0]["interval"] == 2 and small.hooks[0]["name"] == "ema2"
    assert small.optimizer.eps == 1e-6 and small.strategy.anything == 1


@pytest.mark.parametrize(("option", "expected"), [
    ("model.net.hiden_dim=3", "--cfg-options model.net.hiden_dim: ToyMLP takes no argument 'hiden_dim'; "
                              "closest: hidden_dim"),
    ("hooks.0.std=1", "--cfg-options hooks.0.std: EMAHook takes no argument 'std'; closest: stds"),
    ("model.sigma_dta=1", "--cfg-options model.sigma_dta: EDMPrecond takes no argument 'sigma_dta'; "
                          "closest: sigma_data"),
    ("data.foo=1", "--cfg-options data.foo: unknown key 'foo' in 'data'; closest: train, val"),
    ("test_cfg.prt=model", "--cfg-options test_cfg.prt: unknown key 'prt' in 'test_cfg'; closest: part, sampler"),
])
def test_a_typo_names_the_closest_argument(small, option, expected):
    with pytest.raises(ConfigError) as exc:
        apply_options(small, [option])
    assert str(exc.value).startswith(expected)


def test_a_class_as_type():
    cfg = Config(dict(model=dict(type="EDMPrecond", net=dict(type=ToyMLP))))
    apply_options(cfg, ["model.net.hidden_dim=8"])
    assert cfg.model.net.hidden_dim == 8
    with pytest.raises(ConfigError, match="ToyMLP takes no argument 'hiden_dim'"):
        apply_options(cfg, ["model.net.hiden_dim=8"])


def test_documented_keys_the_file_omits(tmp_path, small):
    path = tmp_path / "cfg.py"
    path.write_text(textwrap.dedent(f"""
        _base_ = ["{SMALL}"]
        train_cfg = dict(_delete_=True, max_iters=10, batch_size=64, batch_gpu=32, precision="fp32", seed=0)
    """))
    cfg = load_config(str(path), ["train_cfg.log_interval=5", "train_cfg.grad_clip=0.5"], str(tmp_path))
    assert cfg.train_cfg.log_interval == 5 and cfg.train_cfg.grad_clip == 0.5
    apply_options(small, ["test_cfg.part=model"])  # a test_cfg key (TEST_DEFAULTS) the file does not write
    assert small.test_cfg.part == "model"
