# Rectified flow on the 2D tree toy: the EDM baseline's data, MLP body, optimizer and schedule
# (configs/toy/tree2d_baseline.py) with the flow objective (diffusion/flow.py: x_t = (1 - t) x0 + t eps, the network
# predicts v = eps - x0), so that tools/toy_objectives_report.py compares EDM, DDPM and flow at equal images seen.
_base_ = [
    "../_base_/data/tree2d.py",
    "../_base_/schedules/toy_4k.py",
    "../_base_/runtime/default.py",
]
model = dict(
    type="DDPMNet",  # any body as net(x_t, t, labels); labels one-hot, -1 the null class
    label_dim=2,  # two classes
    time_scale=1.0,  # t in [0, 1] goes to the body as it is (EDM's c_noise range)
    net=dict(type="ToyMLP", in_dim=2, num_classes=2, hidden_dim=64, num_layers=4),  # the EDM baseline's body
)
objective = dict(
    type="RectifiedFlowLoss",
    t_sampling="logit_normal",  # t = sigmoid(N(logit_mean, logit_std^2)), SD3's density; 'uniform' is plain RF
    logit_mean=0.0,
    logit_std=1.0,
    shift=1.0,  # t' = shift t / (1 + (shift - 1) t); 1: none
    p_uncond=0.1,  # drop labels 10% of the time, so the same net gives classifier-free guidance at test time
)
_sampler = dict(type="FlowHeunSampler", num_steps=32, shift=1.0)  # 64 network evaluations, as EDM's Heun-32's 63
hooks = [
    dict(type="EMAHook", stds=(0.050, 0.100)),  # EDM2 power-function averages, as the EDM baseline
    dict(type="ValidationHook", interval=64, num_batches=4),  # the flow loss on held-out data at fixed t and noise
    # Plot + sample metrics at the end; the denoiser metrics read an EDM D(x; sigma) and are left out.
    dict(type="ToyPlotHook", interval=0, num_samples=4096, ema="pf_0.050", metrics=True, with_denoiser=False,
         sampler=_sampler),
]
test_cfg = dict(
    num=4096,  # samples to generate (tools/test.py --num overrides)
    batch_gpu=4096,  # samples per device per sampler call
    seed=0,  # sample i starts from noise seeded seed + i, the same at any world size
    ema="pf_0.050",  # the average to sample from
    sampler=dict(_sampler, guidance=1.0),  # v_null + w (v - v_null); w = 1 + the flow seed's w; 1 is none
    guide=None,  # 'cfg' for classifier-free guidance (the net with the null label)
    shape=(2,),  # one sample: a 2D point
    images=False,  # raw samples go to the evaluators
    ref=None,
)
evaluators = [dict(type="ToyMetrics", num_samples=4096, with_denoiser=False)]
