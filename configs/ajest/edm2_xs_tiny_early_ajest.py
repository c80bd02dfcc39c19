# AJEST that turns itself off once the learner's running super-batch loss falls below the reference's.
_base_ = ["./edm2_xs_tiny.py"]
hooks = [
    dict(type="CurationHook", selector=dict(type="jest", n_chunks=8, score="learnability"), filter_ratio=0.8,
         scope="local", reference={{_base_.reference}},
         early=dict(patience=3, momentum=0.9, check_interval=50)),  # 3 checks in a row, every 50 steps
    dict(type="EMAHook", stds=(0.050, 0.100)),
    dict(type="ValidationHook", interval=1024, num_batches=8),
    dict(type="SampleHook", interval=2048, num=64, ema="pf_0.100", sampler={{_base_.guided_sampler}},
         guide={{_base_.reference}}),
]
