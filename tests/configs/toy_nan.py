# toy_small with NaN inputs injected at steps 3 and 4 (0-based), aborting after 3 non-finite steps in a row.
_base_ = ["./toy_small.py"]
custom_imports = dict(imports=["tests.hooks_for_tests"], allow_failed_imports=False)
train_cfg = dict(max_nonfinite_steps=3)
hooks = [dict(type="NaNInjectHook", steps=(3, 4), from_step=None), dict(type="EMAHook", stds=(0.050,))]
