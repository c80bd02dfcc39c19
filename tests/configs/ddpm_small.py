# configs/toy/tree2d_ddpm.py with everything DDPM can switch on, shrunk for 2-process tests: a learned variance
# (hybrid loss), label dropout and importance-sampled timesteps over T = 16 with a 2-loss history (full after the
# first step, so the importance weights are in use from step 1); 2 processes x batch_gpu 32 x 2 rounds.
_base_ = ["../../configs/toy/tree2d_ddpm.py"]
model = dict(net=dict(out_dim=4))  # eps and the variance values v of each coordinate
objective = dict(num_timesteps=16, variance="learned_range", loss="hybrid", importance_sampling=True,
                 history_per_term=2, p_uncond=0.2)
optimizer = dict(lr=3e-3)
train_cfg = dict(max_iters=10, batch_size=128, batch_gpu=32, log_interval=2)
checkpoint = dict(interval=5, keep=2)
hooks = [dict(type="EMAHook", stds=(0.050,))]
test_cfg = dict(sampler=dict(num_timesteps=16, variance="learned_range", num_steps=4), ema=None)
