# Random selection: the same super-batch (640 per device) and kept batch (128) as AJEST, chosen uniformly,
# so the comparison isolates the effect of scoring. The reference is the sampling guide only.
_base_ = ["./edm2_xs_tiny.py"]
hooks = [
    dict(type="CurationHook", selector=dict(type="random"), filter_ratio=0.8, scope="local", reference=None),
    dict(type="EMAHook", stds=(0.050, 0.100)),
    dict(type="ValidationHook", interval=1024, num_batches=8),
    dict(type="SampleHook", interval=2048, num=64, ema="pf_0.100", sampler={{_base_.guided_sampler}},
         guide={{_base_.reference}}),
]
