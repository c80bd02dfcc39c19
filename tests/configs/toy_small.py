# The tree toy shrunk for tests: 2 processes x batch_gpu 32 x 2 accumulation rounds, with clipping and EMA.
_base_ = ["../../configs/toy/tree2d_baseline.py"]
optimizer = dict(lr=3e-3)
train_cfg = dict(max_iters=10, batch_size=128, batch_gpu=32, grad_clip=1.0, log_interval=2)
checkpoint = dict(interval=5, keep=2)
hooks = [dict(type="EMAHook", stds=(0.050, 0.100), decays=(0.9,))]
