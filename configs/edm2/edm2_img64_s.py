# EDM2-S on ImageNet 64x64 pixels (Karras et al. 2024, Table 3): batch 2048, lr_ref 0.0100, decay after 70k
# batches, ramp-up 10 Mimg, ln(sigma) ~ N(-0.8, 1.6^2), no dropout, 2^30 images.
#   tools/dist_train.sh configs/edm2/edm2_img64_s.py 8
_base_ = [
    "../_base_/models/edm2_tiny_xs.py",
    "../_base_/data/imagenet_64.py",
    "../_base_/schedules/edm2_tiny_2048.py",
    "../_base_/runtime/default.py",
]
model = dict(net=dict(preset="img64-s"))  # 3x64x64, 1000 classes, channels 192
objective = dict(P_mean=-0.8, P_std=1.6)
optimizer = dict(lr=0.0100)
lr_schedule = dict(ref_iters=70000, rampup_iters=4883)
train_cfg = dict(max_iters=524288, batch_gpu=64)  # 2^30 images / 2048
checkpoint = dict(interval=4096, keep=5)
sampler = dict(type="EDMHeunSampler", num_steps=32, sigma_min=0.002, sigma_max=80.0, guidance=1.0)
hooks = [
    dict(type="EMAHook", stds=(0.050, 0.100)),
    dict(type="SampleHook", interval=8192, num=64, ema="pf_0.100", sampler=sampler),
]
test_cfg = dict(num=50000, batch_gpu=128, seed=0, ema="pf_0.100", sampler=sampler, guide=None, images=True)
