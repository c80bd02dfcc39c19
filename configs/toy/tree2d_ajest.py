# The 2D tree toy learner trained with autoguided JEST (AJEST): each step scores a super-batch of
# 4096 / (1 - 0.8) = 20480 with the learner and the reference (configs/toy/tree2d_ref.py, trained first)
# and keeps 4096 by JEST over learnability L_learner - L_ref in 8 chunks.
_base_ = ["./tree2d_baseline.py"]
reference = dict(
    model=dict(type="EDMPrecond", sigma_data=0.5, label_dim=2,
               net=dict(type="ToyMLP", in_dim=2, num_classes=2, hidden_dim=32, num_layers=4)),
    checkpoint="work_dirs/tree2d_ref",  # a work_dir (its newest checkpoint), a checkpoint dir or a .safetensors
    ema="pf_0.100",  # which average of the reference to use; None for its raw weights
)
hooks = [
    dict(
        type="CurationHook",
        selector=dict(type="jest", n_chunks=8, score="learnability"),
        filter_ratio=0.8,  # B = b / (1 - filter_ratio)
        scope="local",  # 'local': per device as the AJEST work; 'global': one selection over all ranks
        reference=reference,
        early=None,  # dict(patience=3, momentum=0.9, check_interval=10) turns on Early AJEST
    ),
    dict(type="EMAHook", stds=(0.050, 0.100)),
    dict(type="ValidationHook", interval=64, num_batches=4),  # unbiased loss on held-out data (data.val)
    dict(type="ToyPlotHook", interval=0, num_samples=4096, ema="pf_0.050", metrics=True,
         guide=reference,  # autoguidance: samples and guided metrics use D_ref + w (D - D_ref)
         sampler=dict(type="EDMHeunSampler", num_steps=32, sigma_min=0.002, sigma_max=5.0, guidance=3.0)),
]
# Test-time sampling as the ToyPlotHook above: autoguided by the reference at w = 3 (merged into the baseline's).
# _delete_: the baseline's guide is None, which a dict cannot be merged into.
test_cfg = dict(guide=dict(_delete_=True, **reference), sampler=dict(guidance=3.0))
