# The DDPM seed's ImageNet 64x64 recipe (its README, "My Results"): the block U-Net "Res-Res-Atn" (stages
# res-res-clsAtn-atn-chnAtn), cosine T = 1000, learned variance, MSE + 0.001 L_vb in nats, label dropout 0.2,
# AdamW 3e-4, batch 128 per GPU on 8 GPUs, 600k steps; it reports FID 32.24 on 10k samples (DDIM 100 steps, eta 0,
# no guidance) at 450k steps.
#   tools/dist_train.sh configs/ddpm/unet_imagenet64_res_res_atn.py 8
#   tools/dist_test.sh configs/ddpm/unet_imagenet64_res_res_atn.py work_dirs/unet_imagenet64_res_res_atn 8
_base_ = ["../_base_/data/imagenet64_downsampled.py", "../_base_/runtime/default.py"]

# The discrete process, shared by the objective, the samplers and the NLL evaluator (diffusion/ddpm.py).
diffusion = dict(
    schedule="cosine",  # improved DDPM's cosine alpha_bar
    num_timesteps=1000,  # T
    prediction="eps",  # the network's first 3 channels predict the noise
    variance="learned_range",  # its last 3 interpolate log Sigma between log beta_tilde and log beta
    rescale_timesteps=True,  # the network sees t * 1000 / T (= t here)
)
model = dict(type="DDPMUNet", preset="imagenet64_res_res_atn")  # 212,931,427 parameters, 123.9 GFLOPs/image
objective = dict(
    type="DDPMLoss",
    **diffusion,
    loss="hybrid_seed",  # the seed's MSE + 0.001 L_vb (nats); 'hybrid' is improved DDPM's MSE + L_vb (bits) T/1000
    p_uncond=0.2,  # label dropout to the null class: classifier-free guidance at test time
    importance_sampling=False,  # the seed's default; True: improved DDPM's loss-second-moment sampling of t
    history_per_term=10,  # importance sampling: losses kept per t (uniform until every t has this many)
)
optimizer = dict(type="AdamW", lr=3e-4, eps=1e-4, weight_decay=0.01)  # the seed's AdamW (torch's default decay)
lr_schedule = dict(type="ConstantLR")  # no warm-up, no decay (the seed's)
train_cfg = dict(
    max_iters=600000,  # the seed's 600k optimizer steps (its best checkpoint: 450k)
    batch_size=1024,  # global batch: 8 GPUs x 128
    batch_gpu=128,  # per device per micro-batch; fewer GPUs accumulate (batch_size / (batch_gpu x world))
    precision="fp32",  # the seed's; 'bf16' (autocast) is about 2x faster on A100 / H100
    seed=0,
    grad_clip=None,  # the seed does not clip
    max_nonfinite_steps=10,
    log_interval=100,
)
checkpoint = dict(interval=10000, keep=3)  # the seed saves every 10k steps
# Test-time sampler: DDIM over 100 strided steps, deterministic; w = 4 of the seed is guidance=5 in our
# D_guide + w (D - D_guide) convention (eps_null + (1 + 4)(eps_c - eps_null)); 1.0 reproduces its FID setting.
sampler = dict(type="DDIMSampler", **diffusion, num_steps=100, eta=0.0,
               clip_denoised=False,  # the seed's `corrected` off: clipping x0 degrades guided samples, it notes
               guidance=5.0)
hooks = [
    dict(type="ValidationHook", interval=10000, num_batches=4,
         objective_overrides=dict(p_uncond=0.0, importance_sampling=False)),  # labelled, uniform t
    dict(type="SampleHook", interval=10000, num=64, ema=None, sampler=sampler, guide="cfg"),
]
test_cfg = dict(
    num=10000,  # the seed's FID sample count (50000 for the standard figure)
    batch_gpu=128,
    seed=0,
    ema=None,  # the seed samples its raw weights (it keeps no average)
    sampler=sampler,
    guide="cfg",  # classifier-free guidance: the same network with the null class
    images=True,
    # FID's reference statistics: tools/compute_ref_stats.py --data data/imagenet64/train --config THIS_FILE
    # --evaluators FID --out data/imagenet64/fid_ref.npz (tools/test.py --ref overrides)
    ref="data/imagenet64/fid_ref.npz",
)
evaluators = [
    dict(type="FID"),  # torch-fidelity's Inception-v3 against test_cfg.ref (tools/compute_ref_stats.py)
    # The full variational bound in bits/dim on 1000 validation images (T network calls per image; improved DDPM
    # reports 3.53 on ImageNet-64 with its own network and the full set).
    dict(type="NLL", data=dict(type="MDSImageStream", path="data/imagenet64/val", xflip=False, num_workers=0),
         num_examples=1000, batch_gpu=64, **diffusion),
]
