# EDM2-XXS for Tiny ImageNet 64x64: 31.10M parameters; the AJEST reference (and autoguidance guide).
_base_ = ["./edm2_tiny_xs.py"]
model = dict(net=dict(preset="tiny-xxs"))  # channels 64
