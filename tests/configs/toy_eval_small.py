# The small toy with an EvalHook: evaluations at steps 4, 8 (no checkpoint there: a best one is saved) and 10 (the
# last), 256 samples each, keeping work_dir/best by the denoising loss at sigma 0.1.
_base_ = ["./toy_small.py"]
test_cfg = dict(num=256)
evaluators = [dict(type="ToyMetrics", num_samples=256)]
hooks = [
    dict(type="EMAHook", stds=(0.050, 0.100), decays=(0.9,)),
    dict(type="EvalHook", interval=4, num=256, best_metric="loss_sigma_0.1"),
]
