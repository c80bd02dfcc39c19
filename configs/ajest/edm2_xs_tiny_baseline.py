# EDM2-XS on Tiny ImageNet 64x64, uniform batches: the baseline of the AJEST image experiments.
#   tools/dist_train.sh configs/ajest/edm2_xs_tiny_baseline.py 8
_base_ = [
    "../_base_/models/edm2_tiny_xs.py",
    "../_base_/data/tiny_imagenet_64.py",
    "../_base_/schedules/edm2_tiny_2048.py",
    "../_base_/runtime/default.py",
]
checkpoint = dict(interval=2048, keep=5)
sampler = dict(type="EDMHeunSampler", num_steps=32, sigma_min=0.002, sigma_max=80.0, guidance=1.0)
hooks = [
    dict(type="EMAHook", stds=(0.050, 0.100)),  # power-function EMA; tools/reconstruct_phema.py fits others
    dict(type="ValidationHook", interval=1024, num_batches=8),  # held-out loss on data.val
    dict(type="SampleHook", interval=2048, num=64, ema="pf_0.100", sampler=sampler),  # 8x8 PNG grid + TensorBoard
]
# tools/test.py / tools/generate.py: 50k samples from the EMA, FID and FD-DINOv2 against tools/compute_ref_stats.py.
test_cfg = dict(num=50000, batch_gpu=128, seed=0, ema="pf_0.100", sampler=sampler, guide=None, images=True)
# tools/test.py CONFIG CKPT --num 50000 --ref tiny.npz: the AJEST work's numbers. Weights are local files (README,
# Evaluation: where to download each); tools/compute_ref_stats.py writes the reference statistics of the data.
evaluators = [
    dict(type="FID"),  # torch-fidelity's Inception-v3, 2048-d pool features
    dict(type="FDDINOv2"),  # DINOv2 ViT-L/14 features
    dict(type="ClassifierAccuracy", num_classes=200),  # top-1 / top-5 of the Tiny ImageNet Swin-L
]
