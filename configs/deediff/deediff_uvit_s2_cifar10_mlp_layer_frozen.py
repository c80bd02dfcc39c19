# DeeDiff with mlp_probe_per_layer probes, on the frozen backbone;
# everything else as deediff_uvit_s2_cifar10_attention_frozen.py.
_base_ = ["./deediff_uvit_s2_cifar10_attention_frozen.py"]
parts = dict(model=dict(model=dict(classifier_type="mlp_probe_per_layer")))
