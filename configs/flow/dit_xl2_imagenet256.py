# DiT-XL/2 with the rectified-flow objective (SiT-XL/2's recipe): configs/flow/dit_b2_imagenet256.py at XL/2 size,
# 674,834,720 trainable parameters (DiT's count at 4x32x32 latents, 1000 classes). SiT-XL/2 trains 7M iterations
# (FID 2.06 with CFG 1.5 and its SDE sampler); 400k is its comparison point.
#   tools/dist_train.sh configs/flow/dit_xl2_imagenet256.py 8
_base_ = ["./dit_b2_imagenet256.py"]

parts = dict(model=dict(model=dict(type="FlowDiT", preset="dit_xl2")))
