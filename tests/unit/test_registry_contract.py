"""Every registered component builds from a config dict and round-trips its state (docs/architecture.md, "Conventions").
A component registered without an entry here fails the test, so new ones cannot slip through untested."""

import pytest
import torch

from diffscale import registry as R
from diffscale.errors import ConfigError
from diffscale.utils.dist import DistInfo

CPU = DistInfo(0, 1, 0, torch.device("cpu"))
NET = dict(type="ToyMLP", hidden_dim=16, num_layers=2)
ARGS = {  # registry name -> {component: (cfg kwargs, default args)}
    "model": {"ToyMLP": (dict(hidden_dim=16, num_layers=2), {}), "EDMPrecond": (dict(net=NET, label_dim=2), {}),
              "ConsistencyPrecond": (dict(net=NET, label_dim=2), {}),
              "SongUNet": (dict(preset="ddpmpp", img_resolution=8, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                                attn_resolutions=(4,)), {}),
              "GANHead": (dict(in_channels=32, resolution=8), {}),
              "FakeScoreWithHead": (dict(score=dict(type="EDMPrecond", logvar_channels=0, net=dict(
                  type="SongUNet", img_resolution=8, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                  attn_resolutions=()))), {}),
              "EDM2UNet": (dict(preset="tiny-xxs", channels=16, channels_per_head=16), {}),
              "DDPMUNet": (dict(preset="tiny", emb_ch=8, t_dim=16, c_dim=16), {}),
              "DDPMNet": (dict(net=NET, label_dim=2), {}),
              "UViT": (dict(preset="tiny", embed_dim=16), {}), "FlowDiT": (dict(preset="tiny"), {}),
              "SDVAE": (dict(random_init=True, parts="decoder"), {}),
              "DeeDiffUViT": (dict(preset="tiny", embed_dim=16, classifier_type="mlp_probe_per_timestep",
                                   num_timesteps=8), {}),
              "EDM2Precond": (dict(net=dict(type="EDM2UNet", preset="tiny-xxs", channels=16, channels_per_head=16)),
                              {})},
    "objective": {"EDMLoss": ({}, {}), "DMD2Loss": (dict(gen_update_every=3), {}),
                  "DDPMLoss": (dict(num_timesteps=16, importance_sampling=True), {}),
                  "DeeDiffLoss": (dict(num_timesteps=16), {}),
                  "TimeNoiseLoss": ({}, {}), "RectifiedFlowLoss": (dict(t_sampling="uniform", shift=3.0), {}),
                  "ConsistencyDistillationLoss": ({}, {})},
    "sampler": {"EDMHeunSampler": (dict(num_steps=4), {}), "OneStepSampler": (dict(sigma_max=5.0), {}),
                "ConsistencySampler": (dict(sigmas=(80.0, 0.5853)), {}),
                "DDPMSampler": (dict(num_timesteps=16), {}), "DDIMSampler": (dict(num_timesteps=16, num_steps=4), {}),
                "EarlyExitDDPMSampler": (dict(threshold=0.1, num_timesteps=16), {}),
                "EarlyExitDDIMSampler": (dict(threshold=0.1, num_timesteps=16, num_steps=4, simulate=True), {}),
                "FlowEulerSampler": (dict(num_steps=4), {}), "FlowHeunSampler": (dict(num_steps=4, shift=2.0), {}),
                "FlowEulerStochasticSampler": (dict(num_steps=4, correction=False), {})},
    "dataset": {"Tree2DStream": ({}, dict(batch_gpu=8, rank=1, seed=3)),
                "MDSImageStream": (dict(path=None, num_workers=0), dict(batch_gpu=4, rank=1, world_size=2, seed=3))},
    "optimizer": {name: ({"lr": 0.1}, {"params": [torch.nn.Parameter(torch.ones(2))]})
                  for name in ("Adam", "AdamW", "RAdam", "SGD")},
    "lr_schedule": {"ConstantLR": (dict(warmup_iters=10), {}), "InvSqrtLR": (dict(ref_iters=100, rampup_iters=10), {}),
                    "WarmupCosineLR": (dict(max_iters=100, warmup_iters=10), {})},
    "hook": {"EMAHook": ({}, {}), "LoggerHook": ({}, {}), "CheckpointHook": (dict(interval=5), {}),
             "ToyPlotHook": ({}, {}), "CurationHook": (dict(selector=dict(type="random")), {}),
             "SlowDownHook": ({}, {}), "NaNInjectHook": ({}, {}), "ValidationHook": (dict(interval=5), {}),
             "SampleHook": (dict(num=4), {}),
             "EvalHook": (dict(interval=5, best_metric="fid"), {})},
    "strategy": {"ddp": ({}, dict(dist_info=CPU, precision="fp32")),
                 "fsdp": ({}, dict(dist_info=CPU, precision="fp32")),
                 "deepspeed": (dict(zero_stage=3), dict(dist_info=CPU, precision="bf16"))},
    "evaluator": {name: (dict(random_weights=True), {}) for name in ("FID", "FDDINOv2", "ClassifierAccuracy", "CMMD")}
    | {"ToyMetrics": ({}, {}),  # networks are built on first use: construction is cheap
       "NLL": (dict(data=dict(type="MDSImageStream", path="held_out"), num_timesteps=16), {})},  # data: at compute
    "selector": {"jest": (dict(n_chunks=4, score="inverted"), {}), "random": ({}, {}), "learnability_topk": ({}, {}),
                 "hard_learner": ({}, {})},
}
REGISTRIES = [R.MODELS, R.OBJECTIVES, R.SAMPLERS, R.DATASETS, R.OPTIMIZERS, R.LR_SCHEDULES, R.HOOKS, R.STRATEGIES,
              R.EVALUATORS, R.SELECTORS]
CASES = [(reg, name) for reg in REGISTRIES for name in R.names(reg)]


@pytest.fixture(scope="module", autouse=True)
def _tiny_mds(tmp_path_factory):
    """MDSImageStream's entry reads a real 16-sample dataset (path=None above), written once for this module."""
    from tests.data_helpers import make_mds

    ARGS["dataset"]["MDSImageStream"][0]["path"] = str(make_mds(tmp_path_factory.mktemp("mds") / "train")[0])


def test_every_registered_component_has_a_contract_entry():
    import tests.hooks_for_tests  # noqa: F401  (its hooks are registered too)

    missing = [(reg.name, name) for reg in REGISTRIES for name in R.names(reg) if name not in ARGS[reg.name]]
    assert not missing


@pytest.mark.parametrize(("registry", "name"), CASES, ids=[f"{r.name}:{n}" for r, n in CASES])
def test_builds_and_round_trips(registry, name):
    kwargs, defaults = ARGS[registry.name][name]
    obj = R.build(registry, dict(type=name, **kwargs), registry.name, **defaults)
    assert isinstance(obj, registry.get(name))
    if hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict") and registry is not R.STRATEGIES:
        state = obj.state_dict()
        clone = R.build(registry, dict(type=name, **kwargs), registry.name, **defaults)
        clone.load_state_dict(state)
        assert _equal(clone.state_dict(), state)


def test_dataset_state_resumes_the_stream():
    stream = R.build(R.DATASETS, dict(type="Tree2DStream"), "data.train", batch_gpu=16, rank=0, seed=5)
    for _ in range(3):
        next(stream)
    state = stream.state_dict()
    expected = next(stream)
    other = R.build(R.DATASETS, dict(type="Tree2DStream"), "data.train", batch_gpu=16, rank=0, seed=5)
    other.load_state_dict(state)
    got = next(other)
    assert torch.equal(got["x"], expected["x"]) and torch.equal(got["label"], expected["label"])
    rank1 = R.build(R.DATASETS, dict(type="Tree2DStream"), "data.train", batch_gpu=16, rank=1, seed=5)
    assert not torch.equal(next(rank1)["x"], next(R.build(R.DATASETS, dict(type="Tree2DStream"), "data.train",
                                                          batch_gpu=16, rank=0, seed=5))["x"])


def test_unknown_name_lists_closest():
    with pytest.raises(ConfigError, match=r"model.type: 'ToyMPL' is not in the model registry; closest: ToyMLP"):
        R.build(R.MODELS, dict(type="ToyMPL"), "model")


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("package", ["models", "diffusion", "sampling", "selection", "evaluation", "data"])
def test_importing_a_package_registers_its_components(package):
    """`import diffscale.<package>` alone registers what it holds (checked in a fresh interpreter)."""
    import subprocess
    import sys

    registry = {"models": "MODELS", "diffusion": "OBJECTIVES", "sampling": "SAMPLERS", "selection": "SELECTORS",
                "evaluation": "EVALUATORS", "data": "DATASETS"}[package]
    code = (f"import diffscale.{package}; from diffscale import registry as R; "
            f"print(sorted(R.{registry}.module_dict))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() != "[]", out


def test_registry_and_config_are_leaves():
    """Importing the registry or the config module imports no component (nothing registered yet)."""
    import subprocess
    import sys

    code = ("import sys, diffscale.config, diffscale.registry as R; "
            "print(sum(len(r.module_dict) for r in R.ALL), any(m.startswith('diffscale.engine') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "False"], out


def test_library_user_builds_after_package_import():
    import diffscale.models  # noqa: F401

    net = R.MODELS.build(dict(type="EDM2UNet", preset="tiny-xxs", channels=16, channels_per_head=16))
    assert type(net).__name__ == "EDM2UNet"
