# dmd2_small run long enough to be killed in the middle: 18 iterations (the generator steps at 0, 5, 10, 15), a
# checkpoint every 6, 0.08 s per iteration.
_base_ = ["./dmd2_small.py"]
custom_imports = dict(imports=["tests.hooks_for_tests"], allow_failed_imports=False)
train_cfg = dict(max_iters=18)
checkpoint = dict(interval=6, keep=3)
hooks = [dict(type="EMAHook", part="generator", stds=(0.050,)), dict(type="SlowDownHook", seconds=0.08)]
