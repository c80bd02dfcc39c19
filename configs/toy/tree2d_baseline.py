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
# tools/test.py and EvalHook: how samples are made at test time (diffscale/evaluation/pipeline.py, TEST_DEFAULTS).
test_cfg = dict(
    num=4096,  # samples to generate (tools/test.py --num overrides)
    batch_gpu=4096,  # samples per device per sampler call
    seed=0,  # sample i starts from noise seeded seed + i, on rank i % world_size: the same samples at any world size
    ema="pf_0.050",  # the average to sample from (an EMAHook key); None for the raw weights
    sampler=dict(type="EDMHeunSampler", num_steps=32, sigma_min=0.002, sigma_max=5.0,
                 guidance=1.0),  # w in D_guide + w (D - D_guide); 1 is no guidance
    guide=None,  # None; 'cfg' (the same net without labels); dict(model, checkpoint, ema) for autoguidance
    shape=(2,),  # one sample: a 2D point (image models declare theirs: img_channels, img_resolution)
    images=False,  # raw samples go to the evaluators (images in [-1, 1] would be converted to uint8)
    ref=None,  # reference statistics .npz (tools/compute_ref_stats.py); the toy metrics need none
)
# What tools/test.py and EvalHook report: the toy metrics against the exact mixture (evaluation/toy_metrics.py).
evaluators = [dict(type="ToyMetrics", num_samples=4096)]
