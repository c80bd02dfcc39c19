# EDM2-XS on Tiny ImageNet 64x64 with autoguided JEST (AJEST), the headline diffscale workflow:
#   tools/dist_train.sh configs/ajest/edm2_xxs_tiny_ref.py 8     # the reference, first
#   tools/dist_train.sh configs/ajest/edm2_xs_tiny.py 8
# Each micro-batch scores a super-batch of 128 / (1 - 0.8) = 640 per device with the learner and the reference
# on the same sigma and noise, and keeps 128 by JEST over learnability in 8 chunks.
_base_ = ["./edm2_xs_tiny_baseline.py"]
reference = dict(
    model=dict(type="EDM2Precond", sigma_data=0.5,  # the architecture of configs/ajest/edm2_xxs_tiny_ref.py
               net=dict(type="EDM2UNet", preset="tiny-xxs", channels=None, img_resolution=None, label_dim=None,
                        num_blocks=None, channels_per_head=None, dropout=None)),
    checkpoint="work_dirs/edm2_xxs_tiny_ref",  # a work_dir (its newest checkpoint), a checkpoint dir or a .safetensors
    ema="pf_0.100",  # the reference's average to use
)
guided_sampler = dict(type="EDMHeunSampler", num_steps=32, sigma_min=0.002, sigma_max=80.0,
                      guidance=2.0)  # autoguidance weight w: D_ref + w (D - D_ref)
hooks = [
    dict(type="CurationHook", selector=dict(type="jest", n_chunks=8, score="learnability"), filter_ratio=0.8,
         scope="local",  # per device, as the AJEST work; 'global' selects once over all ranks
         reference=reference, early=None),
    dict(type="EMAHook", stds=(0.050, 0.100)),
    dict(type="ValidationHook", interval=1024, num_batches=8),
    dict(type="SampleHook", interval=2048, num=64, ema="pf_0.100", sampler=guided_sampler, guide=reference),
]
test_cfg = dict(sampler=guided_sampler, guide=dict(_delete_=True, **reference))
