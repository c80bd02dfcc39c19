# DDPM on the 2D tree toy: the EDM baseline's data, MLP body, optimizer and schedule (configs/toy/tree2d_baseline.py)
# with an eps-predicting discrete-time objective instead of EDM's, so that tools/toy_objectives_report.py compares
# EDM, DDPM and flow at equal images seen (same iterations, same batch).
_base_ = [
    "../_base_/data/tree2d.py",
    "../_base_/schedules/toy_4k.py",
    "../_base_/runtime/default.py",
]
# The discrete process both the objective and the samplers read (diffusion/ddpm.py, build_diffusion).
diffusion = dict(
    schedule="cosine",  # improved DDPM's cosine alpha_bar; 'linear' is DDPM's 1e-4..0.02
    num_timesteps=1000,  # T
    prediction="eps",  # the network predicts the noise
    variance="fixed_small",  # Sigma = beta_tilde (the posterior variance): nothing to learn on the toy
    rescale_timesteps=True,  # the network sees t * 1000 / T
)
model = dict(
    type="DDPMNet",  # forward(x_t, t, labels): t * 1e-3 to the body, labels one-hot (-1: the null class)
    label_dim=2,  # two classes
    net=dict(type="ToyMLP", in_dim=2, num_classes=2, hidden_dim=64, num_layers=4),  # the EDM baseline's body
)
objective = dict(
    type="DDPMLoss",
    **diffusion,
    loss="simple",  # MSE on eps (DDPM's L_simple); 'hybrid' needs variance='learned_range'
    p_uncond=0.1,  # drop labels 10% of the time, so the same net gives classifier-free guidance at test time
    importance_sampling=False,  # improved DDPM's loss-second-moment sampling of t (for L_vb training)
)
hooks = [
    dict(type="EMAHook", stds=(0.050, 0.100)),  # EDM2 power-function averages, as the EDM baseline
    dict(type="ValidationHook", interval=64, num_batches=4),  # DDPMLoss on held-out data at fixed t and noise
    # Plot + sample metrics at the end; the denoiser metrics read an EDM D(x; sigma) and are left out.
    dict(type="ToyPlotHook", interval=0, num_samples=4096, ema="pf_0.050", metrics=True, with_denoiser=False,
         sampler=dict(type="DDIMSampler", **diffusion, num_steps=100, eta=0.0, clip_denoised=False)),
]
test_cfg = dict(
    num=4096,  # samples to generate (tools/test.py --num overrides)
    batch_gpu=4096,  # samples per device per sampler call
    seed=0,  # sample i starts from noise seeded seed + i (its step noise too), the same at any world size
    ema="pf_0.050",  # the average to sample from
    # DDIM, 100 strided steps, deterministic; clip_denoised=False: the toy's points leave [-1, 1].
    sampler=dict(type="DDIMSampler", **diffusion, num_steps=100, eta=0.0, clip_denoised=False,
                 guidance=1.0),  # eps_null + w (eps - eps_null); w = 1 + the DDPM seed's w; 1 is none
    guide=None,  # 'cfg' for classifier-free guidance (the net with the null label)
    shape=(2,),  # one sample: a 2D point
    images=False,  # raw samples go to the evaluators
    ref=None,
)
evaluators = [dict(type="ToyMetrics", num_samples=4096, with_denoiser=False)]
