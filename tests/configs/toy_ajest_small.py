# toy_small trained with AJEST against tests/configs/toy_ref_small.py; the test sets the checkpoint path.
_base_ = ["./toy_small.py"]
train_cfg = dict(max_iters=12, log_interval=4)
hooks = [
    dict(type="CurationHook", selector=dict(type="jest", n_chunks=4), filter_ratio=0.75, scope="local",
         log_interval=4, early=None,
         reference=dict(model=dict(type="EDMPrecond", sigma_data=0.5, label_dim=2,
                                   net=dict(type="ToyMLP", hidden_dim=16, num_layers=4)),
                        checkpoint="set/by/the/test", ema="pf_0.100")),
    dict(type="EMAHook", stds=(0.050,)),
    dict(type="ValidationHook", interval=4, num_batches=2),
]
