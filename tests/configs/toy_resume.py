# toy_small run long enough to be killed in the middle: 30 steps, a checkpoint every 10, 0.08 s per step.
_base_ = ["./toy_small.py"]
custom_imports = dict(imports=["tests.hooks_for_tests"], allow_failed_imports=False)
train_cfg = dict(max_iters=30)
checkpoint = dict(interval=10, keep=3)
hooks = [dict(type="EMAHook", stds=(0.050, 0.100)), dict(type="SlowDownHook", seconds=0.08)]
