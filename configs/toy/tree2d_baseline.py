# The 2D tree toy trained on uniformly drawn batches: the baseline of the curation experiments.
_base_ = [
    "../_base_/models/toy_mlp.py",
    "../_base_/data/tree2d.py",
    "../_base_/schedules/toy_4k.py",
    "../_base_/runtime/default.py",
]
hooks = [
    dict(type="EMAHook", stds=(0.050, 0.100)),  # EDM2 power-function averages
    dict(type="ValidationHook", interval=64, num_batches=4),  # unbiased loss on held-out data (data.val)
    dict(type="ToyPlotHook", interval=0, num_samples=4096, ema="pf_0.050", metrics=True,  # plot + metrics at the end
         sampler=dict(type="EDMHeunSampler", num_steps=32, sigma_min=0.002, sigma_max=5.0)),
]
