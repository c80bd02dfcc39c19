# ddpm_small run long enough to be killed in the middle: 18 iterations, a checkpoint every 6, 0.08 s per iteration.
_base_ = ["./ddpm_small.py"]
custom_imports = dict(imports=["tests.hooks_for_tests"], allow_failed_imports=False)
train_cfg = dict(max_iters=18)
checkpoint = dict(interval=6, keep=3)
hooks = [dict(type="EMAHook", stds=(0.050,)), dict(type="SlowDownHook", seconds=0.08)]
