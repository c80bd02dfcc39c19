# DMD2 (Yin et al. 2024) on the 2D tree toy: distil the EDM teacher of configs/toy/tree2d_baseline.py into a
# one-step generator. Train the teacher first: python tools/train.py configs/toy/tree2d_baseline.py
#
# Noise levels. The teacher was trained with ln sigma ~ N(-2.3, 1.5^2): it saw sigma > 5 in 0.46% and sigma > 10 in
# 0.11% of its examples, and the toy's own sampler starts at sigma_max = 5 (data std 0.5: at sigma 5 the data carry
# 1% of the noisy variance). DMD2's image grid (sigma_max = 80) would put 33% of the
# distribution-matching levels above 10, where the real score is an extrapolation, so both the grid and the
# generator's input level stop at 5 here. A standalone sanity run (a manual loop over DMD2Loss with a shorter-trained
# teacher, 5000 iterations at batch 1024, lr 5e-4, one seed; raw weights) agreed: support share / energy distance to
# the data 0.357 / 0.0016 with (sigma_gen, grid sigma_max) = (5, 5), 0.375 / 0.0027 with (5, 80) and
# 0.360 / 0.0033 with (80, 80), the last one also much slower early (0.0204 vs 0.0039 after 1250 iterations).
_base_ = ["../_base_/data/tree2d.py", "../_base_/runtime/default.py"]

# The teacher's architecture (configs/_base_/models/toy_mlp.py); all three parts start from its weights.
teacher = dict(
    type="EDMPrecond",
    sigma_data=0.5,  # std of the toy data
    label_dim=2,  # two classes; integer labels are one-hot encoded
    net=dict(type="ToyMLP", in_dim=2, num_classes=2, hidden_dim=64, num_layers=4),
)
# The teacher's weights: the work_dir that `tools/train.py configs/toy/tree2d_baseline.py` writes, its EMA pf_0.050.
teacher_init = dict(checkpoint="work_dirs/tree2d_baseline", ema="pf_0.050")
# Learning rate of both trained parts: AdamW lr=1e-3 (below). The teacher trained from scratch at Adam 1e-2
# (3.5e-3 at its end, after the 1 / sqrt(t) decay); DMD2's 2e-6 (CIFAR-10, batch 128, a 55M-parameter U-Net) is far
# too small for this 34k-parameter MLP. In the sanity run above (sigma 5 / 5) the support share after 5000 iterations
# was 0.339 at 1e-4, 0.357 at 5e-4, 0.401 at 1e-3 and 0.413 at 2e-3 (its teacher with 32 Heun steps: 0.456); 1e-3 is
# the safer of the two best against a sharper, fully trained teacher. One rate for both parts, as in DMD2: the fake
# score keeps up by stepping 5x as often.
parts = dict(
    generator=dict(  # the one-step generator G(sigma_gen z; sigma_gen)
        model=teacher,  # the teacher's architecture, used at one fixed input level
        optimizer=dict(type="AdamW", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),  # DMD2's optimizer settings
        lr_schedule=dict(type="ConstantLR"),  # constant rate, no warm-up (the parts start trained)
        grad_clip=10.0,  # max gradient L2 norm of this part: guards against early spikes of the normalised gradient
        # The denoiser body only: DMD2 never uses the learned log-variance head, and DDP insists that every
        # trainable parameter takes part in the loss.
        trainable=["net.*"],
        init=teacher_init,  # start from the teacher
    ),
    fake_score=dict(  # D_fake: the denoiser of the generator's current distribution
        model=teacher,  # same architecture as the teacher
        optimizer=dict(type="AdamW", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),  # as the generator's
        lr_schedule=dict(type="ConstantLR"),  # constant rate, no warm-up
        grad_clip=10.0,  # max gradient L2 norm of this part
        trainable=["net.*"],  # the denoiser body (no log-variance head: see the generator)
        init=teacher_init,  # start from the teacher (the generator starts there too)
    ),
    real_score=dict(model=teacher, init=teacher_init),  # D_real, the teacher itself; no optimizer: frozen
)
objective = dict(
    type="DMD2Loss",
    gen_update_every=5,  # one generator step per 5 fake-score steps (DMD2's two time-scale rule)
    num_levels=1000,  # levels of the Karras grid both losses draw from
    sigma_min=0.002,  # lowest grid level (EDM's)
    sigma_max=5.0,  # highest grid level: the toy's sampler start, not DMD2's 80 (see the top of this file)
    rho=7.0,  # grid curvature (EDM eq. 5)
    min_level=20,  # generator loss: level index uniform in [20, 980], DMD2's 2%..98% (sigma 0.0027..4.6)
    max_level=980,  # inclusive
    sigma_gen=5.0,  # the generator's input level sigma_gen z; test_cfg.sampler.sigma_max must be the same
    sigma_data=0.5,  # std of the toy data (EDM weighting of the fake score's loss)
)
train_cfg = dict(
    max_iters=5000,  # iterations: 5000 fake-score steps and 1000 generator steps (the sanity run's length)
    batch_size=1024,  # global batch per iteration: how many samples each phase generates (the data give labels only)
    batch_gpu=1024,  # per device per micro-batch; batch_size / (batch_gpu * world) = accumulation rounds
    precision="fp32",  # fp32 | bf16 (autocast) | fp16 (autocast + loss scaling)
    seed=0,  # data order and every noise draw of the objective
    grad_clip=None,  # default max gradient norm of a part; each trained part sets its own above
    max_nonfinite_steps=10,  # abort after this many skipped non-finite steps in a row
    log_interval=100,  # iterations between log lines / TensorBoard points
)
hooks = [
    # EDM2 power-function average of the generator over its own steps (1000), what test_cfg samples.
    dict(type="EMAHook", part="generator", stds=(0.050,)),
    # Plot and toy metrics of one-step samples at the end. The metrics' denoiser losses treat the generator as a
    # denoiser and mean nothing here; support_share and class_accuracy are the sample metrics.
    dict(type="ToyPlotHook", interval=0, num_samples=4096, ema="pf_0.050", metrics=True,
         sampler=dict(type="OneStepSampler", sigma_max=5.0)),
]
# tools/test.py and EvalHook: how samples are made at test time (diffscale/evaluation/pipeline.py).
test_cfg = dict(
    part="generator",  # the part that samples
    ema="pf_0.050",  # the average to sample from (an EMAHook key of that part); None for the raw weights
    sampler=dict(type="OneStepSampler", sigma_max=5.0),  # x = G(5 z; 5): objective.sigma_gen
    shape=(2,),  # one sample: a 2D point
    images=False,  # raw samples go to the evaluators
    num=4096,  # samples to generate (tools/test.py --num overrides)
    batch_gpu=4096,  # samples per device per sampler call
    seed=0,  # sample i starts from noise seeded seed + i: the same samples at any world size
    guide=None,  # one-step generators take no guide
    ref=None,  # reference statistics; the toy metrics need none
)
# What tools/test.py and EvalHook report: the toy metrics against the exact mixture (evaluation/toy_metrics.py).
evaluators = [dict(type="ToyMetrics", num_samples=4096)]
