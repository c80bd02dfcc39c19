# configs/dmd2/tree2d_dmd2.py shrunk for 2-process tests: 2 processes x batch_gpu 32 x 2 accumulation rounds.
# The teacher is set by the test (e.g. the exported weights of tests/configs/toy_small.py, the same architecture):
# parts.{generator,fake_score,real_score}.init.checkpoint=<path>.
_base_ = ["../../configs/dmd2/tree2d_dmd2.py"]
parts = dict(  # lr 3e-3: the weights move measurably in 10 steps
    generator=dict(optimizer=dict(lr=3e-3), init=dict(checkpoint="set/by/the/test")),
    fake_score=dict(optimizer=dict(lr=3e-3), init=dict(checkpoint="set/by/the/test")),
    real_score=dict(init=dict(checkpoint="set/by/the/test")),
)
objective = dict(gen_update_every=5)  # the generator steps at iterations 0 and 5
train_cfg = dict(max_iters=10, batch_size=128, batch_gpu=32, log_interval=2)
checkpoint = dict(interval=5, keep=2)
hooks = [
    dict(type="EMAHook", part="generator", stds=(0.050,)),
    dict(type="EMAHook", part="fake_score", stds=(0.050,)),
]
