# EDM2-XS on ImageNet-512 latents (Karras et al. 2024, Table 2): 124.71M parameters, batch 2048, lr_ref 0.0120,
# decay after 70k batches, ramp-up 10 Mimg, ln(sigma) ~ N(-0.4, 1.0^2), no dropout, 2^31 images.
#   tools/dist_train.sh configs/edm2/edm2_img512_xs.py 8
_base_ = [
    "../_base_/models/edm2_tiny_xs.py",
    "../_base_/data/imagenet_512_latents.py",
    "../_base_/schedules/edm2_tiny_2048.py",
    "../_base_/runtime/default.py",
]
model = dict(net=dict(preset="img512-xs"))  # 4x64x64 latents, 1000 classes
optimizer = dict(lr=0.0120)
lr_schedule = dict(ref_iters=70000, rampup_iters=4883)  # 70k batches; 10 Mimg / 2048
train_cfg = dict(max_iters=1048576, batch_gpu=128)  # 2^31 images / 2048
checkpoint = dict(interval=4096, keep=5)
sampler = dict(type="EDMHeunSampler", num_steps=32, sigma_min=0.002, sigma_max=80.0, guidance=1.0)
hooks = [
    dict(type="EMAHook", stds=(0.050, 0.100)),
    # Latent samples: the grid shows the first 3 latent channels (decoding needs the SD-VAE, outside diffscale).
    dict(type="SampleHook", interval=8192, num=64, ema="pf_0.100", sampler=sampler),
]
test_cfg = dict(num=50000, batch_gpu=128, seed=0, ema="pf_0.100", sampler=sampler, guide=None, images=False)
