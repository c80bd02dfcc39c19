# Random selection baseline: the same super-batch (20480) and kept batch (4096) as AJEST, chosen uniformly,
# so the comparison isolates the effect of scoring.
_base_ = ["./tree2d_ajest.py"]  # for its `reference`, used here as the sampling guide only
hooks = [
    dict(type="CurationHook", selector=dict(type="random"), filter_ratio=0.8, scope="local", reference=None),
    dict(type="EMAHook", stds=(0.050, 0.100)),
    dict(type="ValidationHook", interval=64, num_batches=4),  # unbiased loss on held-out data (data.val)
    dict(type="ToyPlotHook", interval=0, num_samples=4096, ema="pf_0.050", metrics=True,
         guide={{_base_.reference}},  # autoguidance: samples and guided metrics use D_ref + w (D - D_ref)
         sampler=dict(type="EDMHeunSampler", num_steps=32, sigma_min=0.002, sigma_max=5.0, guidance=3.0)),
]
