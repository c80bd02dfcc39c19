# DMD2 on CIFAR-10 with its GAN term (Yin et al. 2024, Sec. 4.3; the seed's --gan_classifier --gen_cls_loss_weight
# --diffusion_gan --diffusion_gan_max_timestep): dmd2_cifar10.py plus a classifier head on the fake score's
# bottleneck, trained with the fake score on real training images against the generator's samples, and a
# non-saturating GAN loss for the generator. Everything else (teacher, grid, optimizers, batch, FID) as there.
#   tools/dist_train.sh configs/dmd2/dmd2_cifar10_gan.py 1   # after the steps at the top of dmd2_cifar10.py
_base_ = ["./dmd2_cifar10.py"]

parts = dict(
    fake_score=dict(
        # The teacher's copy (dmd2_cifar10.py `student`) with DMD2's head on its bottleneck: DDPM++ at 32 px has it
        # at 8x8 with 256 channels, so the head is DMD2's own: Conv 4x4 stride 2 -> GroupNorm(32) -> SiLU ->
        # Conv 4x4 stride 4 -> GroupNorm(32) -> SiLU -> Conv 1x1 -> one logit (2.10M parameters).
        model=dict(_delete_=True, type="FakeScoreWithHead", score={{_base_.student}},
                   head=dict(type="GANHead", channels=None, num_groups=32)),  # channels None: the bottleneck's 256
        # The head trains with the fake score (one optimizer, DMD2's guidance optimizer); map_augment stays out.
        trainable=["net.map_label.*", "net.map_layer*", "net.enc.*", "net.dec.*", "head.*"],
        # The score's entries are the teacher's (net.*): it starts from the teacher; the head keeps its fresh init.
        init=dict(checkpoint="checkpoints/edm-cifar10-32x32-cond-vp.safetensors", ema=None, missing=["head.*"]),
    ),
)
objective = dict(
    gan_classifier=True,  # --gan_classifier
    gen_cls_loss_weight=3e-3,  # --gen_cls_loss_weight 3e-3: generator phase, softplus(-l(x_g))
    guidance_cls_loss_weight=1e-2,  # --cls_loss_weight 1e-2: fake-score phase, softplus(l(fake)) + softplus(-l(real))
    diffusion_gan=True,  # --diffusion_gan: the head sees real and fake noised at a random grid level
    diffusion_gan_max_timestep=1000,  # --diffusion_gan_max_timestep 1000 (= num_levels): the whole grid
)
