# configs/dmd2/dmd2_cifar10_gan.py (DMD2 with the GAN head and diffusion GAN) shrunk for 2-process tests: a tiny
# DDPM++ SongUNet (8 px, widths 16 / 32, one block per level, no attention, its bottleneck 32 x 4 x 4) as teacher,
# generator and fake score (+ GANHead), 3x8x8 MDS images of 4 classes, 2 processes x batch_gpu 8 x 2 accumulation
# rounds, fp32. The test sets the data (parts.*.init.checkpoint: a random-weight teacher export, data.train.path:
# tests/data_helpers.make_mds). The GAN weights are 1 (not DMD2's 3e-3 / 1e-2) so the head's gradients move the
# weights as much as the rest: a gradient leaking into the fake score in the generator phase changes the result.
_base_ = ["../../configs/dmd2/dmd2_cifar10_gan.py"]
tiny_net = dict(type="SongUNet", preset="ddpmpp", img_resolution=8, model_channels=16, channel_mult=(1, 2),
                num_blocks=1, attn_resolutions=(), dropout=0.0, label_dim=4,
                augment_dim=9)  # as the real teacher: map_augment is left out by the parts' `trainable` patterns
tiny = dict(type="EDMPrecond", sigma_data=0.5, label_dim=4, logvar_channels=0, net=tiny_net)
teacher_init = dict(checkpoint="set/by/the/test", ema=None)
# lr 3e-3 without warm-up: the weights move measurably in 10 steps. Adam eps 1e-4 (not 1e-8): the strategies reduce
# gradients in different orders and ZeRO-3 / FSDP2 convolve gathered weights, last-bit differences that Adam's
# normalisation turns into up to lr-sized ones on the few entries whose gradient is below ~1e-7 (2.5e-5 after 10
# steps under ZeRO-3 with eps 1e-8, 2.2e-6 with 1e-4); a leaking generator-phase gradient still moves them by ~lr.
fast = dict(optimizer=dict(lr=3e-3, eps=1e-4), lr_schedule=dict(warmup_iters=0))
parts = dict(
    generator=dict(model=dict(_delete_=True, **tiny), init=teacher_init, **fast),
    fake_score=dict(model=dict(_delete_=True, type="FakeScoreWithHead", score=tiny, head=dict(type="GANHead")),
                    init=dict(teacher_init, missing=["head.*"]), **fast),
    real_score=dict(model=dict(_delete_=True, **tiny), init=teacher_init),
)
data = dict(train=dict(path="set/by/the/test", num_workers=0))
objective = dict(gen_update_every=5, gen_cls_loss_weight=1.0, guidance_cls_loss_weight=1.0)
train_cfg = dict(max_iters=10, batch_size=32, batch_gpu=8, precision="fp32", log_interval=2)
checkpoint = dict(interval=5, keep=2)  # the resume tests kill the run after the checkpoint at 5
hooks = [  # averages of both trained parts: mirrors under every strategy (no EvalHook: no FID weights here)
    dict(type="EMAHook", part="generator", stds=(0.050,)),
    dict(type="EMAHook", part="fake_score", stds=(0.050,)),
]
test_cfg = dict(shape=(3, 8, 8), num=16, batch_gpu=8, ref=None)
evaluators = []
