# The DeeDiff backbone: U-ViT-S/2 (44,255,328 parameters) trained as a DDPM eps-predictor on CIFAR-10, with the
# early-stopping-diffusion seed's settings (its train.py defaults and scripts/train_uvit.sh): AdamW 2e-4, weight
# decay 0.03, betas (0.99, 0.999), 1500 warm-up steps then cosine decay, gradient clipping 1.0, batch 128,
# 100k steps, linear betas over T = 1000. Train it, then a probe config (deediff_uvit_s2_cifar10_*.py) on top:
#   python tools/convert_dataset.py --source cifar10 --input cifar-10-batches-py --output data/cifar10 --split all
#   tools/dist_train.sh configs/deediff/uvit_s2_cifar10.py 8
_base_ = ["../_base_/runtime/default.py"]
data = dict(
    train=dict(type="MDSImageStream", path="data/cifar10/train", xflip=True, num_workers=4),
    val=dict(type="MDSImageStream", path="data/cifar10/val", xflip=False, num_workers=0, config_key="data.val"),
)
# The discrete process of the objective and the samplers (diffusion/ddpm.py): DDPM's linear betas 1e-4..0.02.
diffusion = dict(schedule="linear", num_timesteps=1000, prediction="eps", variance="fixed_small",
                 rescale_timesteps=True)  # the network sees t in 0..999 (T = 1000)
model = dict(type="UViT", preset="uvit_s2_cifar10")  # unconditional: tokens are [time, 256 patches]
objective = dict(type="DDPMLoss", **diffusion, loss="simple", p_uncond=0.0, importance_sampling=False)
optimizer = dict(type="AdamW", lr=2e-4, betas=(0.99, 0.999), weight_decay=0.03)
lr_schedule = dict(type="WarmupCosineLR", max_iters=100000, warmup_iters=1500)  # diffusers' cosine with warm-up
train_cfg = dict(
    max_iters=100000,  # the seed's n_steps
    batch_size=128,  # global batch
    batch_gpu=16,  # per device per micro-batch: 8 GPUs x 16, or fewer GPUs accumulating
    precision="fp32",
    seed=0,
    grad_clip=1.0,  # the seed's max_grad_norm
    max_nonfinite_steps=10,
    log_interval=100,
)
checkpoint = dict(interval=5000, keep=3)
# The seed samples with ancestral DDPM over all 1000 steps.
sampler = dict(type="DDPMSampler", **diffusion, clip_denoised=True, guidance=1.0)
hooks = [
    dict(type="ValidationHook", interval=5000, num_batches=4),
    dict(type="SampleHook", interval=10000, num=64, ema=None, sampler=sampler),
]
test_cfg = dict(
    num=1024,  # the seed's FID / CMMD sample count
    batch_gpu=128,
    seed=0,
    ema=None,  # the seed keeps no average
    sampler=sampler,
    guide=None,
    images=True,
    ref="data/cifar10/ref_stats.npz",  # tools/compute_ref_stats.py --data data/cifar10/train --config THIS_FILE
)
evaluators = [dict(type="FID"), dict(type="CMMD")]
