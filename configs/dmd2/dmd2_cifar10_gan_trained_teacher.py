# DMD2 with the GAN head (dmd2_cifar10_gan.py) distilling a teacher trained here with configs/edm/edm_cifar10_ddpmpp.py
# instead of the imported pickle. That recipe has no augmentation pipe, so its network has no augmentation-label
# layer (augment_dim=0), and the teacher is its EMA (decay_0.99929) in the run's newest checkpoint; real score,
# fake score and generator all start from it. Everything else as dmd2_cifar10_gan.py.
#   tools/dist_train.sh configs/edm/edm_cifar10_ddpmpp.py 8               # -> work_dirs/edm_cifar10_ddpmpp
#   tools/dist_train.sh configs/dmd2/dmd2_cifar10_gan_trained_teacher.py 8
_base_ = ["./dmd2_cifar10_gan.py"]

net = dict(augment_dim=0)  # as configs/edm/edm_cifar10_ddpmpp.py trains it
# A work_dir loads its newest complete checkpoint; `part`: the EDM run's only part.
teacher_run = dict(checkpoint="work_dirs/edm_cifar10_ddpmpp", ema="decay_0.99929", part="model")
parts = dict(
    generator=dict(model=dict(net=net), init=teacher_run),
    fake_score=dict(model=dict(score=dict(net=net)), init=teacher_run),  # the head keeps its fresh init (missing)
    real_score=dict(model=dict(net=net), init=teacher_run),
)
