# Consistency distillation (CD) on CIFAR-10 (Song et al. 2023, "Consistency Models", Alg. 2; the recipe of
# openai/consistency_models_cifar10 configs/cifar10_ve_cd.py): LPIPS distance, N = 18, mu = 0, Heun teacher steps,
# RAdam 4e-4, batch 512, 800k iterations, no warm-up, no clipping, EMA 0.9999 for evaluation, fp32.
#
# The teacher here is EDM's published class-conditional DDPM++ (edm-cifar10-32x32-cond-vp.pkl, FID 1.79), not the
# paper's: Song et al. distil their own unconditional NCSN++ EDM (configs/cifar10_k_ve.py) into an NCSN++ student.
# So the published anchors below are for a different (unconditional, NCSN++) teacher and student; this run is
# class-conditional and DDPM++ throughout. Get the teacher's weights first:
#   wget https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl
#   python tools/import_checkpoint.py edm-cifar10-32x32-cond-vp.pkl checkpoints/edm-cifar10-32x32-cond-vp.safetensors
# and LPIPS's VGG16 trunk (torchvision's ImageNet weights; the linear heads come with the lpips package):
#   wget https://download.pytorch.org/models/vgg16-397923af.pth -O checkpoints/vgg16-397923af.pth
#   python tools/convert_dataset.py --source cifar10 --input cifar-10-batches-py --output data/cifar10 --split all
#   tools/dist_train.sh configs/consistency/cd_cifar10_ddpmpp.py 8
#
# Published anchors (Consistency Models, CIFAR-10 unconditional, 50k samples): CD with LPIPS FID 3.55 with one step
# and 2.93 with two.
_base_ = ["../_base_/data/cifar10.py", "../_base_/runtime/default.py"]

teacher_ckpt = "checkpoints/edm-cifar10-32x32-cond-vp.safetensors"  # tools/import_checkpoint.py's export (above)
# The export holds the pickle's 'ema' network as part 'model' (its raw weights): no average to pick, ema=None.
teacher_init = dict(checkpoint=teacher_ckpt, ema=None)
# The teacher's network exactly as the export's model_config describes it (tools/import_checkpoint.py prints it):
# augment_dim=9, since EDM trained it with its augmentation pipe; the student keeps that layer so both load the
# export strictly. Neither is ever given augmentation labels (None: the layer is skipped, as in EDM's sampling).
teacher_net = dict(type="SongUNet", preset="ddpmpp", label_dim=10, augment_dim=9, dropout=0.13)
parts = dict(
    model=dict(  # the student f_theta(x, sigma): EDM's boundary-condition parametrisation (c_skip, c_out; App. C)
        model=dict(
            type="ConsistencyPrecond",
            sigma_data=0.5,  # as the teacher's
            label_dim=10,  # class-conditional like the teacher
            sigma_min=0.002,  # f(x, sigma_min) = x; equals objective.sigma_min
            logvar_channels=0,  # EDM's EDMPrecond has no log-variance head: the export loads strictly
            net=dict(teacher_net, dropout=0.0),  # the CD recipe trains the student without dropout (model.dropout)
        ),
        # openai/consistency_models_cifar10 jcm/losses.py get_optimizer, 'radam': optax.scale_by_radam(b1=0.9,
        # b2=0.999, eps=1e-8), no weight decay, a constant lr (its config's `warmup` is read by the Adam branch
        # only), no clipping (grad_clip = inf).
        optimizer=dict(type="RAdam", lr=4e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
        lr_schedule=dict(type="ConstantLR"),  # no warm-up: the student starts from the trained teacher
        grad_clip=None,  # no gradient clipping
        # Everything but map_augment: no augmentation labels reach it, so it would get no gradient (DDP would stop
        # on an unused parameter); it stays the teacher's and is never used.
        trainable=["net.map_label.*", "net.map_layer*", "net.enc.*", "net.dec.*"],
        init=teacher_init,  # start from the teacher (Alg. 2; the recipe's training.finetune=True)
    ),
    teacher=dict(  # D(x, sigma): the frozen EDM denoiser whose probability-flow ODE the student learns to jump
        model=dict(type="EDMPrecond", sigma_data=0.5, label_dim=10, logvar_channels=0, net=teacher_net),
        init=teacher_init,  # no optimizer: frozen, eval mode (no dropout)
    ),
)
objective = dict(
    type="ConsistencyDistillationLoss",
    num_scales=18,  # N: the Karras grid sigma_0..sigma_17 (model.num_scales = 18)
    sigma_min=0.002,  # sigma_0 (the recipe's t_min)
    sigma_max=80.0,  # sigma_17 (t_max)
    rho=7.0,  # grid curvature (EDM eq. 5)
    distance="lpips",  # training.loss_norm = 'lpips'
    weighting="uniform",  # lambda = 1 (training.weighting)
    lpips_weights="checkpoints/vgg16-397923af.pth",  # local file, see the top; or a whole LPIPS state dict
    lpips_resize=224,  # images are upsampled bilinearly to 224 x 224 before LPIPS (jax.image.resize 'bilinear')
    # mu = 0: the target is the student itself under stop-gradient (training.stopgrad=True; with loss
    # 'consistency' the recipe's ema_scales_fn gives no target EMA, so loss_fn uses target_params = params):
    # no `target` part.
    target_decay=0.0,
)
train_cfg = dict(
    max_iters=800000,  # training.n_iters = 800001 (steps 0..800000): 409.6 Mimg
    batch_size=512,  # training.batch_size (global)
    batch_gpu=64,  # per device per micro-batch: 8 GPUs x 64 (LPIPS runs at 224 x 224 on 2 x 64 images each)
    precision="fp32",  # the recipe trains in float32
    seed=0,
    grad_clip=None,
    max_nonfinite_steps=10,
    log_interval=100,
)
checkpoint = dict(interval=10000, keep=3)  # the recipe's snapshot_freq (10k steps)
# One-step sampling x = f(80 z, 80), clamped to [-1, 1] as the reference samplers do. Two-step (FID 2.93 in the
# paper): sigmas=(80.0, 0.5853481231945422), diffscale.sampling.consistency.CIFAR10_CD_TWO_STEP (the notebook's
# ts = [0, 11, 17] on the N = 18 grid).
sampler = dict(type="ConsistencySampler", sigmas=(80.0,), sigma_min=0.002, clip_denoised=True)
ema_name = "decay_0.9999"  # what EMAHook names the average below
hooks = [
    dict(type="EMAHook", part="model", stds=(), decays=(0.9999,)),  # model.ema_rate = 0.9999, for evaluation
    # An 8 x 8 grid of the EMA's one-step samples under work_dir/samples at every checkpoint.
    dict(type="SampleHook", interval=10000, num=64, ema=ema_name, sampler=sampler),
]
# tools/test.py CONFIG CKPT: 50k one-step class-conditional samples from the EMA, FID against the training set
# (tools/compute_ref_stats.py --data data/cifar10/train --out data/cifar10/fid_ref.npz --config THIS_FILE).
test_cfg = dict(part="model", num=50000, batch_gpu=256, seed=0, ema=ema_name, sampler=sampler, guide=None,
                images=True, ref="data/cifar10/fid_ref.npz")
evaluators = [dict(type="FID")]  # torch-fidelity's Inception-v3 (the standard's TF port), 2048-d pool features
