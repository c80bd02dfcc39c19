# The AJEST reference for the 2D tree toy: about half the width and 1/8 of the iterations of the learner.
_base_ = ["./tree2d_baseline.py"]
model = dict(net=dict(hidden_dim=32))
train_cfg = dict(max_iters=512)
checkpoint = dict(interval=256)
hooks = [
    dict(type="EMAHook", stds=(0.050, 0.100)),
    dict(type="ValidationHook", interval=64, num_batches=4),  # unbiased loss on held-out data (data.val)
    dict(type="ToyPlotHook", interval=0, num_samples=4096, ema="pf_0.100", metrics=True,
         sampler=dict(type="EDMHeunSampler", num_steps=32, sigma_min=0.002, sigma_max=5.0)),
]
