# DiT-B/2 (Peebles & Xie 2023) trained with the rectified-flow objective, SiT's recipe (Ma et al. 2024): exactly DiT's
# architecture (GELU MLP, adaLN-zero, fixed 2-D sin-cos positions, qkv bias, no q/k norm, learn_sigma output of which
# the velocity is the first half, as SiT): 130,315,808 trainable parameters at 4x32x32 latents, 1000 classes.
# SiT: AdamW 1e-4 constant, no weight decay, global batch 256, EMA 0.9999, horizontal flips, uniform t, velocity
# prediction of the linear path; 400k iterations for its B/2 vs XL/2 comparisons. SiT runs time the other way
# (t = 1 is data): our t is its 1 - t (diffusion/flow.py).
#   tools/dist_train.sh configs/flow/dit_b2_imagenet256.py 8
_base_ = ["../_base_/data/imagenet256_latents.py", "../_base_/runtime/default.py"]

parts = dict(
    model=dict(
        model=dict(type="FlowDiT", preset="dit_b2"),
        optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),  # SiT / DiT
        lr_schedule=dict(type="ConstantLR"),  # constant, no warm-up
    ),
    vae={{_base_.vae}},  # frozen decoder for PNGs and FID
)
objective = dict(
    type="RectifiedFlowLoss",
    t_sampling="uniform",  # SiT's t ~ U(0, 1)
    shift=1.0,
    p_uncond=0.1,  # DiT / SiT class dropout
)
train_cfg = dict(
    max_iters=400000,  # SiT's 400k
    batch_size=256,  # global
    batch_gpu=32,  # 8 GPUs x 32
    precision="bf16",  # autocast; SiT trained in fp32 (TF32): set 'fp32' to match it exactly
    seed=0,
    grad_clip=None,
    max_nonfinite_steps=10,
    log_interval=100,
)
checkpoint = dict(interval=50000, keep=3)
# SiT's ODE results use an adaptive solver; Heun over 125 steps (250 evaluations) is its fixed-step equivalent here.
# CFG scale 1.5 (DiT / SiT convention v_u + s (v_c - v_u)) is our guidance 1.5.
sampler = dict(type="FlowHeunSampler", num_steps=125, guidance=1.5, shift=1.0)
hooks = [
    dict(type="EMAHook", stds=(0.050, 0.100), decays=(0.9999,)),  # SiT's EMA + EDM2's power-function averages
    dict(type="SampleHook", interval=50000, num=64, ema="decay_0.9999", sampler=sampler, guide="cfg"),
]
test_cfg = dict(num=50000, batch_gpu=64, seed=0, ema="decay_0.9999", sampler=sampler, guide="cfg", images=True,
                part="model", decoder="vae", ref="data/imagenet256/fid_ref.npz")
evaluators = [dict(type="FID")]
