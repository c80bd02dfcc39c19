# AJEST that switches itself off once the learner's super-batch loss falls below the reference's
# (running means with momentum 0.9, compared every 10 steps, 3 checks in a row).
_base_ = ["./tree2d_ajest.py"]
hooks = [
    dict(type="CurationHook", selector=dict(type="jest", n_chunks=8, score="learnability"), filter_ratio=0.8,
         scope="local", reference={{_base_.reference}}, early=dict(patience=3, momentum=0.9, check_interval=10)),
    dict(type="EMAHook", stds=(0.050, 0.100)),
    dict(type="ValidationHook", interval=64, num_batches=4),  # unbiased loss on held-out data (data.val)
    dict(type="ToyPlotHook", interval=0, num_samples=4096, ema="pf_0.050", metrics=True,
         guide={{_base_.reference}},  # autoguidance: samples and guided metrics use D_ref + w (D - D_ref)
         sampler=dict(type="EDMHeunSampler", num_steps=32, sigma_min=0.002, sigma_max=5.0, guidance=3.0)),
]
