# toy_ajest_small with another objective (tests/hooks_for_tests.py TimeNoiseLoss: t and noise, not sigma and
# noise): curation and validation score any objective through sample_condition / per_example.
_base_ = ["./toy_ajest_small.py"]
custom_imports = dict(imports=["tests.hooks_for_tests"], allow_failed_imports=False)
objective = dict(_delete_=True, type="TimeNoiseLoss", sigma_max=5.0)
# Its losses are small (an unweighted x0 error), so JEST's softmax over learnability is nearly uniform at this size;
# the deterministic top-k selector makes "kept examples are more learnable" a sharp check.
hooks = [
    dict(type="CurationHook", selector=dict(type="learnability_topk"), filter_ratio=0.75, scope="local",
         log_interval=4, early=None,
         reference=dict(model=dict(type="EDMPrecond", sigma_data=0.5, label_dim=2,
                                   net=dict(type="ToyMLP", hidden_dim=16, num_layers=4)),
                        checkpoint="set/by/the/test", ema="pf_0.100")),
    dict(type="ValidationHook", interval=4, num_batches=2),
]
