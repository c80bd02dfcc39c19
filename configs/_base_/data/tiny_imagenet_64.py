# Tiny ImageNet 64x64 as MDS shards, written by
#   python tools/convert_dataset.py --source tiny-imagenet --input tiny-imagenet-200 --output data/tiny-imagenet-64 \
#       --split all   # writes data/tiny-imagenet-64/train and data/tiny-imagenet-64/val
# (train: 100,000 images, val: 10,000; 200 classes). `path` may also be a remote URI with a `local` cache.
data = dict(
    train=dict(type="MDSImageStream", path="data/tiny-imagenet-64/train",
               xflip=False,  # EDM2 trains without augmentation
               num_workers=4),  # DataLoader workers per rank gathering batches
    val=dict(type="MDSImageStream", path="data/tiny-imagenet-64/val", xflip=False, num_workers=0,
             config_key="data.val"),
)
