# Downsampled ImageNet 64x64 (Chrabaszcz et al. 2017; the DDPM seed's data): 1,281,167 training and 50,000
# validation images, 1000 classes, from image-net.org's Imagenet64_train_part{1,2}.zip and Imagenet64_val.zip,
# written as MDS shards without unpacking by
#   python tools/convert_dataset.py --source imagenet64 --input data/ --output data/imagenet64 --split all
data = dict(
    train=dict(type="MDSImageStream", path="data/imagenet64/train",
               xflip=False,  # the seed trains without flips
               num_workers=4),  # DataLoader workers per rank gathering batches
    val=dict(type="MDSImageStream", path="data/imagenet64/val", xflip=False, num_workers=0, config_key="data.val"),
)
