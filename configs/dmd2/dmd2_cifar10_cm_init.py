# DMD2 on CIFAR-10 with the generator initialised from a consistency model (the seed's --consistency_model_path run):
# dmd2_cifar10.py with the generator a ConsistencyPrecond (boundary scalings c_skip, c_out of Song et al. 2023,
# App. C) starting from a consistency-distilled checkpoint instead of the teacher. It samples the same way,
# x = G(80 z; sigma = 80) in one step; the real and fake scores stay the EDM teacher and its copy.
# First distil the teacher (configs/consistency/cd_cifar10_ddpmpp.py: same DDPM++ network, class-conditional), then
#   tools/dist_train.sh configs/dmd2/dmd2_cifar10_cm_init.py 1   # after the steps at the top of dmd2_cifar10.py
# The seed's consistency runs use --num_train_timesteps 40 with its own EDM teacher; this one keeps DMD2's
# 1000-level grid of dmd2_cifar10.py for the published EDM teacher (--cfg-options objective.num_levels=40
# objective.min_level=0 objective.max_level=39 gives the seed's grid). For the GAN term too, set the
# objective.gan_classifier keys and the fake score of dmd2_cifar10_gan.py.
_base_ = ["./dmd2_cifar10.py"]

parts = dict(
    generator=dict(
        model=dict(_delete_=True, type="ConsistencyPrecond",
                   sigma_data=0.5,  # as the teacher's
                   label_dim=10,  # class-conditional, as the CD student
                   sigma_min=0.002,  # f(x, sigma_min) = x: the CD run's objective.sigma_min
                   logvar_channels=0,  # EDM's EDMPrecond has no log-variance head (as the CD student)
                   net={{_base_.student.net}}),  # the teacher's DDPM++ without dropout (dmd2_cifar10.py)
        # The CD run's average (its test_cfg.ema) of its part 'model'; a work_dir loads its newest checkpoint.
        init=dict(_delete_=True, checkpoint="work_dirs/cd_cifar10_ddpmpp", ema="decay_0.9999", part="model"),
    ),
)
