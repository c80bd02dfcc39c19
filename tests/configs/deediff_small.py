# configs/deediff/deediff_uvit_s2_cifar10_attention_frozen.py shrunk for 2-process tests: the tiny DeeDiff U-ViT
# (8x8, 5 layers) on a frozen backbone, 2 processes x batch_gpu 2 x 2 rounds, 3 steps. The test sets the data
# (data.train.path) and the backbone (parts.model.init.checkpoint).
_base_ = ["../../configs/deediff/deediff_uvit_s2_cifar10_attention_frozen.py"]
parts = dict(model=dict(model=dict(preset="tiny"), optimizer=dict(lr=1e-2),  # lr 1e-2: heads move in 3 steps
                        lr_schedule=dict(max_iters=3, warmup_iters=1), init=dict(checkpoint="set/by/the/test")))
data = dict(train=dict(path="set/by/the/test", num_workers=0))
train_cfg = dict(max_iters=3, batch_size=8, batch_gpu=2, log_interval=1)
checkpoint = dict(interval=1, keep=3)  # steps 1, 2, 3: the heads must move between them
hooks = []
