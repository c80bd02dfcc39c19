# The latent-flow seed's recipe: a class-conditional rectified-flow transformer on SD-VAE latents of ImageNet 256x256
# (patch 2, 17 blocks, width 64 x 17 = 1088, 17 heads, SwiGLU x4, RMS-normalised q/k, 1-D RoPE, no adaLN-zero),
# AdamW 1e-4 (weight decay 0.01), 1000 warm-up steps then constant, bf16, label dropout 0.1, 250k steps of global
# batch 1024 (8 GPUs x 128), EMA decay 0.99 every 100 steps. Encode the latents first (configs/_base_/data/...).
#   tools/dist_train.sh configs/flow/dit_seed_imagenet256.py 8
#   python tools/generate.py configs/flow/dit_seed_imagenet256.py work_dirs/dit_seed_imagenet256 --out samples/
#   tools/dist_test.sh configs/flow/dit_seed_imagenet256.py work_dirs/dit_seed_imagenet256 8
_base_ = ["../_base_/data/imagenet256_latents.py", "../_base_/runtime/default.py"]

parts = dict(
    model=dict(
        model=dict(type="FlowDiT", preset="seed_imagenet256"),  # 4x32x32 latents, 1000 classes
        optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),  # the seed's
        lr_schedule=dict(type="ConstantLR", warmup_iters=1000),  # linear warm-up, then constant (use_lr_scheduler off)
    ),
    vae={{_base_.vae}},  # frozen: no optimizer; decodes samples for PNGs and FID
)
objective = dict(
    type="RectifiedFlowLoss",  # x_t = (1 - t) x0 + t eps (t = 1 noise), v = eps - x0, MSE
    t_sampling="logit_normal",  # t = sigmoid(N(0, 1)) (the seed's weighted time sampler; SD3's default)
    logit_mean=0.0,
    logit_std=1.0,
    shift=1.0,  # no timestep shift (LightningDiT shifts for larger latents)
    p_uncond=0.1,  # label dropout to the null class, for classifier-free guidance
)
train_cfg = dict(
    max_iters=250000,  # the seed's totalSteps
    batch_size=1024,  # global: 8 GPUs x 128
    batch_gpu=128,  # per device; fewer GPUs accumulate
    precision="bf16",  # the seed's autocast
    seed=0,
    grad_clip=None,  # the seed does not clip
    max_nonfinite_steps=10,
    log_interval=100,
)
checkpoint = dict(interval=10000, keep=3)  # the seed saves every 10k steps
# Euler over 50 steps with classifier-free guidance: the seed's w = 3 (its 3..7 range) is guidance = 1 + w = 4.
sampler = dict(type="FlowEulerSampler", num_steps=50, guidance=4.0, shift=1.0)
hooks = [
    dict(type="EMAHook", stds=(0.050, 0.100), decays=(0.99,), interval=100),  # seed's EMA + EDM2's power function
    dict(type="SampleHook", interval=10000, num=64, ema="decay_0.99", sampler=sampler, guide="cfg"),
]
test_cfg = dict(
    num=50000,  # the standard FID-50k
    batch_gpu=64,
    seed=0,
    ema="decay_0.99",  # the seed samples its EMA model
    sampler=sampler,
    guide="cfg",  # the same network with the null class
    images=True,  # decoded images in [-1, 1] go to the evaluators as uint8
    part="model",  # the part that samples
    decoder="vae",  # samples are latents: decode them through the frozen VAE part
    # ImageNet-256 FID statistics: tools/compute_ref_stats.py --data <256x256 image MDS> --evaluators FID
    ref="data/imagenet256/fid_ref.npz",
)
evaluators = [dict(type="FID")]
