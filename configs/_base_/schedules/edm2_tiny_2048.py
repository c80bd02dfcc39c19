# The AJEST Tiny ImageNet schedule: batch 2048, Adam (0.9, 0.99), EDM2's inverse-square-root decay
# lr / sqrt(max(t / t_ref, 1)) after a linear ramp-up (EDM2 eq. 16).
# EDM2 decays after 70k batches of 2048 on ImageNet (1,281,167 images); scaled by dataset size for Tiny ImageNet
# (100,000 images): t_ref = 70000 * 100000 / 1281167 = 5464 batches. Ramp-up: EDM2's 10 Mimg = 4883 batches.
optimizer = dict(type="Adam", lr=0.0120, betas=(0.9, 0.99), eps=1e-8)  # lr: lr_ref (xs; xxs uses 0.0170)
lr_schedule = dict(type="InvSqrtLR", ref_iters=5464, rampup_iters=4883)
train_cfg = dict(
    max_iters=40960,  # 84 Mimg: EDM2-img64's 1 Gimg scaled by dataset size, rounded to a multiple of 1024
    batch_size=2048,  # global batch per optimizer step
    batch_gpu=128,  # per device per micro-batch: 8 GPUs -> 2 accumulation rounds; AJEST scores 640 per device
    precision="bf16",  # autocast; parameters, optimizer and EMA stay fp32
    seed=0,
    grad_clip=None,  # EDM2 does not clip
    max_nonfinite_steps=10,
    log_interval=100,
)
