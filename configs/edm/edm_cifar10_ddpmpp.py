# EDM's class-conditional CIFAR-10 teacher (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
# Generative Models", config F; NVlabs/edm `train.py --cond=1 --arch=ddpmpp`, the recipe of the published
# edm-cifar10-32x32-cond-vp.pkl): DDPM++ (SongUNet, 55,734,147 parameters here) in EDM's preconditioning, EDM's
# loss, Adam 1e-3 with a 10 Mimg ramp-up, batch 512, dropout 0.13, EMA half-life 0.5 Mimg, 200 Mimg, fp32.
#   python tools/convert_dataset.py --source cifar10 --input cifar-10-batches-py --output data/cifar10 --split all
#   tools/dist_train.sh configs/edm/edm_cifar10_ddpmpp.py 8
#
# Published anchors (NVlabs/edm README): FID 1.79 class-conditional (1.97 unconditional) with 35 network evaluations
# (Heun, 18 steps: test_cfg below), 50k samples against the training set's statistics, the minimum of three seeds;
# about 2 days on 8 V100s. That FID is WITH EDM's non-leaking augmentation pipe (--augment=0.12: x-flips, integer
# translation, isotropic / anisotropic scaling, rotation, each told to the network through a 9-dim augmentation
# label, augment_dim=9). diffscale has no augmentation pipe, so this recipe trains with augment_dim=0 and plain
# dataset x-flips (configs/_base_/data/cifar10.py): expect a worse FID than 1.79 (EDM adds the pipe against the
# overfitting of diffusion models on small datasets, paper Sec. 5). The published weights themselves
# (augment_dim=9) import with tools/import_checkpoint.py; configs/consistency/cd_cifar10_ddpmpp.py distils them.
_base_ = ["../_base_/data/cifar10.py", "../_base_/runtime/default.py"]

model = dict(
    type="EDMPrecond",
    sigma_data=0.5,  # std of CIFAR-10 scaled to [-1, 1] (EDM's sigma_data)
    label_dim=10,  # classes; integer labels are one-hot encoded
    logvar_channels=0,  # EDM's own EDMPrecond: no learned log-variance head (EDMLoss(learned_logvar=False))
    net=dict(
        type="SongUNet",
        preset="ddpmpp",  # EDM --arch=ddpmpp: widths 256 at 32/16/8 px, 4 blocks each, attention at 16 px
        label_dim=10,  # the class embedding's input width (as the precond's)
        augment_dim=0,  # EDM trains with 9 (its augmentation labels); we have no augmentation pipe (top of file)
        dropout=0.13,  # EDM --dropout default (the preset's value, written out because the recipe depends on it)
    ),
)
# EDM's loss (training/loss.py EDMLoss): ln(sigma) ~ N(-1.2, 1.2^2), weight (sigma^2 + sd^2) / (sigma sd)^2, summed
# over the image and averaged over the batch (its training loop: loss.sum() / batch_gpu_total): reduction='sum'.
objective = dict(type="EDMLoss", P_mean=-1.2, P_std=1.2, sigma_data=0.5, learned_logvar=False, reduction="sum")
# EDM train.py: torch.optim.Adam(lr=10e-4, betas=[0.9, 0.999], eps=1e-8), no weight decay.
optimizer = dict(type="Adam", lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
# EDM's training loop sets lr * min(cur_nimg / (lr_rampup_kimg * 1000), 1) with lr_rampup_kimg=10000 and no decay:
# a linear ramp-up over 10 Mimg = 19531 iterations of 512, then constant. (EDM's first step is at lr 0, ours at
# 1/19531 of it: the ramp is one step ahead.)
lr_schedule = dict(type="ConstantLR", warmup_iters=19531)
train_cfg = dict(
    max_iters=390625,  # EDM --duration=200 (Mimg): 200,000,000 / 512
    batch_size=512,  # EDM --batch=512 (global)
    batch_gpu=64,  # per device per micro-batch: EDM's 8 GPUs x 64; 1 GPU runs 8 accumulation rounds
    precision="fp32",  # EDM --fp16=False (its default; the CIFAR-10 runs are fp32)
    seed=0,
    grad_clip=None,  # EDM does not clip gradients
    max_nonfinite_steps=10,
    log_interval=100,
)
checkpoint = dict(interval=5000, keep=3)  # 2.56 Mimg between saves (EDM snapshots every 2.5 Mimg)
# EDM's test-time sampler for CIFAR-10: deterministic Heun, 18 steps (35 network evaluations: no correction at the
# last step), sigma 80 -> 0.002 on the rho = 7 grid (EDM eq. 5), no churn.
sampler = dict(type="EDMHeunSampler", num_steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0, guidance=1.0)
# EDM's EMA: beta = 0.5 ** (batch / halflife_nimg) per step, halflife 500 kimg (ema_halflife_kimg=500), ramped up as
# halflife = min(500k, 0.05 * images seen) (ema_rampup_ratio=0.05). EMAHook keeps fixed decays and power-function
# averages, not that ramp, so the average is the ramp's end value at batch 512: 0.5 ** (512 / 500000) =
# 0.99929047, written 0.99929 (half-life 499.7 kimg). The ramp only shapes the first 10 Mimg (19531 steps) of 200;
# without it the average starts from the initial weights and forgets them with a half-life of 977 steps.
ema_name = "decay_0.99929"  # what EMAHook names that average (checkpoints, exports, test_cfg.ema)
hooks = [
    dict(type="EMAHook", stds=(), decays=(0.99929,)),  # the classic average only (no power-function ones)
    dict(type="ValidationHook", interval=10000, num_batches=4),  # held-out EDM loss on data.val (CIFAR-10 test)
    # An 8 x 8 grid of the EMA's samples (classes 0..9 in turn) under work_dir/samples every 5.12 Mimg; the image
    # shape comes from the network (SongUNet's img_channels, img_resolution).
    dict(type="SampleHook", interval=10000, num=64, ema=ema_name, sampler=sampler),
]
# tools/test.py CONFIG CKPT: 50k class-conditional samples from the EMA (classes uniform), FID against the training
# set as EDM measures it (fid.py ref --data=cifar10-32x32.zip holds the 50k training images):
#   tools/compute_ref_stats.py --data data/cifar10/train --out data/cifar10/fid_ref.npz --config THIS_FILE
test_cfg = dict(num=50000, batch_gpu=256, seed=0, ema=ema_name, sampler=sampler, guide=None,
                images=True, ref="data/cifar10/fid_ref.npz")
evaluators = [dict(type="FID")]  # torch-fidelity's Inception-v3 (the standard's TF port), 2048-d pool features
