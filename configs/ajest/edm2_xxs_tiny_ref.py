# The AJEST reference: EDM2-XXS on Tiny ImageNet for 5 Mimg (the seed's reference snapshot, 5000 kimg), used
# through its EMA with std 0.100 both for selection and as the autoguidance guide.
#   tools/dist_train.sh configs/ajest/edm2_xxs_tiny_ref.py 8
_base_ = ["./edm2_xs_tiny_baseline.py"]
model = dict(net=dict(preset="tiny-xxs"))
optimizer = dict(lr=0.0170)  # the xxs lr_ref of the AJEST presets
train_cfg = dict(max_iters=2441)  # 2441 x 2048 = 5.0 Mimg
checkpoint = dict(interval=1024)
