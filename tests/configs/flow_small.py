# configs/flow/dit_seed_imagenet256.py shrunk for 2-process tests: the seed's FlowDiT pieces at the tiny preset
# (8x8x4 latents, RoPE, q/k RMS norm, SwiGLU, 10 classes), logit-normal t, label dropout, posterior sampling and
# mirrored moments in the loader, the seed's interval EMA next to a power-function one; 2 processes x batch_gpu 8 x
# 2 rounds; 12 iterations with a checkpoint every 6 and 0.08 s per iteration, so a run can be killed in the middle.
_base_ = ["../../configs/flow/dit_seed_imagenet256.py"]
custom_imports = dict(imports=["tests.hooks_for_tests"], allow_failed_imports=False)
parts = dict(
    _delete_=True,  # no VAE part: these runs never decode
    model=dict(model=dict(type="FlowDiT", preset="tiny"),
               optimizer=dict(type="AdamW", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
               lr_schedule=dict(type="ConstantLR", warmup_iters=4)),
)
data = dict(train=dict(path="set-by-the-test", num_workers=0))
train_cfg = dict(max_iters=12, batch_size=32, batch_gpu=8, precision="fp32", log_interval=2)
checkpoint = dict(interval=6, keep=3)
hooks = [dict(type="EMAHook", stds=(0.050,), decays=(0.9,), interval=3), dict(type="SlowDownHook", seconds=0.08)]
test_cfg = dict(num=8, batch_gpu=8, decoder=None, images=False, ema=None,
                sampler=dict(type="FlowEulerSampler", num_steps=4, guidance=2.0))
