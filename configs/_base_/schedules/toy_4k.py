optimizer = dict(type="Adam", lr=1e-2, betas=(0.9, 0.99))  # lr: the reference rate of the schedule
lr_schedule = dict(type="InvSqrtLR", ref_iters=512, rampup_iters=0)  # lr / sqrt(max(t / 512, 1))
train_cfg = dict(
    max_iters=4096,  # optimizer steps
    batch_size=4096,  # global batch per step
    batch_gpu=4096,  # per device per micro-batch; batch_size / (batch_gpu * world) = accumulation rounds
    precision="fp32",  # fp32 | bf16 (autocast) | fp16 (autocast + loss scaling)
    seed=0,  # model init, data order and noise
    grad_clip=None,  # max global gradient L2 norm, None for no clipping
    max_nonfinite_steps=10,  # abort after this many skipped non-finite steps in a row
    log_interval=64,  # steps between log lines / TensorBoard points
)
