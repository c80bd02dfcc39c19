# DMD2 (Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image Synthesis") on CIFAR-10 32x32,
# class-conditional, without the GAN term: distil EDM's published DDPM++ teacher into a one-step generator
# x = G(80 z; sigma = 80). The recipe of the DMD2 seed (its main/edm/train_edm.py run on edm-cifar10-32x32-cond-vp.pkl:
# --generator_lr 2e-6 --guidance_lr 2e-6 --dfake_gen_update_ratio 5 --batch_size 128 --max_checkpoint 200
# --initialie_generator, everything else DMD2's defaults). With the GAN head: dmd2_cifar10_gan.py; with the generator
# initialised from a consistency model: dmd2_cifar10_cm_init.py.
#   wget https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl
#   python tools/import_checkpoint.py edm-cifar10-32x32-cond-vp.pkl checkpoints/edm-cifar10-32x32-cond-vp.safetensors
#   python tools/convert_dataset.py --source cifar10 --input cifar-10-batches-py --output data/cifar10 --split all
#   python tools/compute_ref_stats.py --data data/cifar10/val --out data/cifar10/fid_ref_test.npz \
#       --config configs/dmd2/dmd2_cifar10.py   # FID reference: the test split (the seed's statistics file)
#   tools/dist_train.sh configs/dmd2/dmd2_cifar10.py 1   # the seed's batch 128 on one device; more devices split it
_base_ = ["../_base_/data/cifar10.py", "../_base_/runtime/default.py"]

# The teacher exactly as tools/import_checkpoint.py describes the export (augment_dim=9: EDM trained it with its
# augmentation pipe). The real score is this network frozen; generator and fake score start as copies of it.
teacher = dict(type="EDMPrecond", sigma_data=0.5, label_dim=10, logvar_channels=0,
               net=dict(type="SongUNet", preset="ddpmpp", label_dim=10, augment_dim=9))
# The export holds the pickle's 'ema' network (the teacher's average) as part 'model', its raw weights: ema=None.
teacher_init = dict(checkpoint="checkpoints/edm-cifar10-32x32-cond-vp.safetensors", ema=None)
# The trained copies run without dropout (the preset's 0.13), as DMD2 builds its generator and fake score
# (main/edm/edm_network.py: dropout=0.0): a one-step generator with dropout would train on another function than
# the one that samples (eval mode). The state dict is the same, so the teacher's weights load unchanged.
student = dict(teacher, net=dict(teacher["net"], dropout=0.0))
# Every parameter but map_augment: no augmentation labels reach it (DMD2 deletes that layer), so it would get no
# gradient and DDP would stop on an unused parameter; it stays the teacher's and is never used.
student_trainable = ["net.map_label.*", "net.map_layer*", "net.enc.*", "net.dec.*"]
# DMD2 train_edm.py: AdamW (0.9, 0.999), weight decay 0.01, the seed's lr 2e-6 for both; diffusers'
# constant_with_warmup over --warmup_step 500 iterations (ConstantLR: lr * min((step + 1) / 500, 1)), stepped every
# iteration for both parts; --max_grad_norm 10.
part_optimizer = dict(type="AdamW", lr=2e-6, betas=(0.9, 0.999), weight_decay=0.01)
part_lr_schedule = dict(type="ConstantLR", warmup_iters=500)
parts = dict(
    generator=dict(  # G(80 z; 80): the teacher's network used at one input level (--initialie_generator)
        model=student, optimizer=part_optimizer, lr_schedule=part_lr_schedule, grad_clip=10.0,
        trainable=student_trainable,
        init=teacher_init),
    fake_score=dict(  # D_fake: the denoiser of the generator's distribution, a trainable copy of the teacher
        model=student, optimizer=part_optimizer, lr_schedule=part_lr_schedule, grad_clip=10.0,
        trainable=student_trainable,
        init=teacher_init),
    real_score=dict(model=teacher, init=teacher_init),  # D_real: the teacher; no optimizer: frozen, eval mode
)
objective = dict(
    type="DMD2Loss",
    gen_update_every=5,  # --dfake_gen_update_ratio 5: the generator steps on iterations 0, 5, 10, ...
    num_levels=1000,  # --num_train_timesteps 1000 (DMD2's default): the Karras grid both losses draw from
    sigma_min=0.002,  # --sigma_min
    sigma_max=80.0,  # --sigma_max
    rho=7.0,  # --rho
    min_level=20,  # generator loss: level index uniform in [20, 980] (--min_step_percent 0.02, --max_step_percent 0.98)
    max_level=980,
    sigma_gen=80.0,  # --conditioning_sigma 80: x = G(80 z; 80); test_cfg.sampler.sigma_max is the same
    sigma_data=0.5,  # --sigma_data (EDM weighting of the fake score's loss)
    gan_classifier=False,  # no GAN term here (dmd2_cifar10_gan.py adds it)
)
train_cfg = dict(
    max_iters=1000000,  # --train_iters (DMD2's default, which the seed's runs keep); EvalHook keeps the best
    # --batch_size 128 (DMD2's is per process: the seed's 128 on one device). DMD2's ImageNet-64 runs use 280
    # (--cfg-options train_cfg.batch_size=280 train_cfg.batch_gpu=35 on 8 devices).
    batch_size=128,
    batch_gpu=128,  # per device per micro-batch; on more devices each takes 128 / world_size
    precision="bf16",  # autocast in bf16, fp32 weights and optimizer states
    seed=0,
    grad_clip=None,  # each trained part sets its own (10)
    max_nonfinite_steps=10,
    log_interval=100,
)
# --max_checkpoint 200. One checkpoint holds both trained parts with their AdamW states and the teacher, about
# 1.6 GB: keep=200 is about 320 GB of disk; lower it (--cfg-options checkpoint.keep=3) if that is too much.
checkpoint = dict(interval=1000, keep=200)
# The one-step sampler; DMD2 keeps no average of the generator, so samples and FID use its raw weights.
sampler = dict(type="OneStepSampler", sigma_max=80.0)
hooks = [
    # FID of the one-step generator during training (the seed's --ref_path: statistics of the CIFAR-10 test split),
    # on 10k samples every 5000 iterations; work_dir/best/ keeps the checkpoint of the lowest FID.
    dict(type="EvalHook", interval=5000, num=10000, best_metric="fid"),
    # An 8 x 8 grid of the generator's one-step samples (classes 0..9 in turn) under work_dir/samples.
    dict(type="SampleHook", interval=5000, num=64, sampler=sampler),
]
# tools/test.py CONFIG CKPT: 50k one-step class-conditional samples of the generator, FID against the test split.
test_cfg = dict(
    part="generator",  # the part that samples
    ema=None,  # raw weights (no EMAHook)
    sampler=sampler,  # x = G(80 z; 80)
    images=True,  # samples go to the evaluators as images
    num=50000,  # the standard's sample count
    batch_gpu=256,  # samples per device per sampler call
    seed=0,  # sample i starts from noise seeded seed + i
    guide=None,  # a one-step generator takes no guide
    ref="data/cifar10/fid_ref_test.npz",  # tools/compute_ref_stats.py --data data/cifar10/val (top of this file)
)
evaluators = [dict(type="FID")]  # torch-fidelity's Inception-v3 (the standard's TF port), 2048-d pool features
