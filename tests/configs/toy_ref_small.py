# A small reference for curation tests: hidden 16, the toy_small schedule.
_base_ = ["./toy_small.py"]
model = dict(net=dict(hidden_dim=16))
hooks = [dict(type="EMAHook", stds=(0.100,))]
