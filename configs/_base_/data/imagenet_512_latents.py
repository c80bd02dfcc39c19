# ImageNet 512x512 as SD-VAE latents (4x64x64 float, already multiplied by EDM2's per-channel latent scale so
# that their std is about sigma_data = 0.5), stored in MDS from an npz of precomputed latents:
#   python tools/convert_dataset.py --source npz --input imagenet-512-latents.npz --output data/imagenet-512-latents
data = dict(train=dict(type="MDSImageStream", path="data/imagenet-512-latents/train", xflip=False, num_workers=4))
