# The DDPM seed's "Res-Res" model (stages res-res-clsAtn-chnAtn): the recipe of unet_imagenet64_res_res_atn.py
# with the other block list; the seed reports FID 32.83 on 10k samples (DDIM 100 steps, eta 0, no guidance) at
# 550k steps.
#   tools/dist_train.sh configs/ddpm/unet_imagenet64_res_res.py 8
_base_ = ["./unet_imagenet64_res_res_atn.py"]
model = dict(preset="imagenet64_res_res")  # 197,566,639 parameters
