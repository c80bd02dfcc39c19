# ImageNet 256x256 as SD-VAE posteriors (stabilityai/sd-vae-ft-ema), encoded once into MDS by tools/encode_latents.py:
# the mean and log-variance of each image and of its horizontal flip, 2 x 8 x 32 x 32 float16 per example.
#   torchrun --nproc_per_node 8 tools/encode_latents.py --source imagefolder --input data/imagenet/train \
#       --output data/imagenet256-latents/train --vae data/sd-vae-ft-ema --resolution 256
# latents=True: every example at every epoch is a fresh posterior sample (mean + exp(logvar / 2) eps) of the image
# or of its flip (a fair coin per example and epoch), times the VAE's scaling factor 0.18215 (its diffscale.json).
data = dict(train=dict(type="MDSImageStream", path="data/imagenet256-latents/train", latents=True, xflip=True,
                       num_workers=4))
# The frozen SD-VAE decoder part (no optimizer): samples (latents) are decoded through it into images for PNGs, grids
# and FID. `path`: a local copy of stabilityai/sd-vae-ft-ema (config.json + weights), e.g.
#   huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir data/sd-vae-ft-ema
vae = dict(model=dict(type="SDVAE", path="data/sd-vae-ft-ema", parts="decoder"))
