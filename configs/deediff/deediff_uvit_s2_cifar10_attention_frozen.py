# DeeDiff on the U-ViT-S/2 backbone of uvit_s2_cifar10.py (train that first: work_dirs/uvit_s2_cifar10): an exit
# head and an attention probe at the input of every layer, trained on the FROZEN backbone (the seed's
# --load_backbone --freeze_backbone): only exit_heads.* and probes.* move. The seed's losses (variant 'seed':
# L_simple + L_u + L_UAL), its optimizer and schedule. Sampling: real early exit at threshold 0.075.
#   tools/dist_train.sh configs/deediff/deediff_uvit_s2_cifar10_attention_frozen.py 8
#   python tools/early_exit_report.py configs/deediff/deediff_uvit_s2_cifar10_attention_frozen.py \
#       work_dirs/deediff_uvit_s2_cifar10_attention_frozen
_base_ = ["./uvit_s2_cifar10.py"]
heads = ["exit_heads.*", "probes.*"]  # models/deediff.py HEAD_PATTERNS: what DeeDiff adds to the backbone
model = optimizer = lr_schedule = None  # one named part instead of the shorthand
parts = dict(
    model=dict(
        model=dict(type="DeeDiffUViT", preset="uvit_s2_cifar10",
                   # attention_probe | mlp_probe_per_layer | mlp_probe_per_timestep | mlp_probe_per_layer_per_timestep
                   classifier_type="attention_probe",
                   num_timesteps=1000),  # probes of the per-timestep kinds: one per DDPM step
        optimizer=dict(type="AdamW", lr=2e-4, betas=(0.99, 0.999), weight_decay=0.03),
        lr_schedule=dict(type="WarmupCosineLR", max_iters=100000, warmup_iters=1500),
        grad_clip=1.0,
        trainable=heads,  # frozen backbone; True trains everything (the fine-tuned configs)
        # The backbone from the U-ViT run; the heads and probes are not in it and keep their fresh init.
        init=dict(checkpoint="work_dirs/uvit_s2_cifar10", ema=None, missing=heads),
    ),
)
objective = dict(type="DeeDiffLoss", variant="seed",  # 'paper': weights (1 - u_i), target detached
                 use_unweighted_loss=False)  # True adds sum_i L_n,i (the seed's --use_unweighted_loss)
sampler = dict(type="EarlyExitDDPMSampler", schedule="linear", num_timesteps=1000, prediction="eps",
               variance="fixed_small", rescale_timesteps=True, clip_denoised=True, threshold=0.075)
hooks = [dict(type="ValidationHook", interval=5000, num_batches=4)]
test_cfg = dict(sampler=sampler)
