# CIFAR-10 32x32 as MDS shards (train: 50,000 images, test: 10,000; 10 classes; 3x32x32 uint8, read as [-1, 1]),
# written by
#   python tools/convert_dataset.py --source cifar10 --input cifar-10-batches-py --output data/cifar10 \
#       --split all   # writes data/cifar10/train (data_batch_1..5) and data/cifar10/val (test_batch)
# The converter names CIFAR-10's test split 'val', as every held-out split. Resolution and classes come from the
# dataset (its diffscale.json), not from this file. `path` may also be a remote URI with a `local` cache.
data = dict(
    train=dict(type="MDSImageStream", path="data/cifar10/train",
               # Random x-flips. EDM flips CIFAR-10 inside its augmentation pipe (xflip=1e8 at p=0.12: every image
               # mirrored with probability 1/2, the flip passed to the network as an augmentation label); without
               # that pipe, dataset flips are the nearest equivalent (CIFAR-10 is mirror-symmetric). Consistency
               # distillation's CIFAR-10 recipe flips too (data.random_flip=True).
               xflip=True,
               num_workers=4),  # DataLoader workers per rank gathering batches
    val=dict(type="MDSImageStream", path="data/cifar10/val", xflip=False, num_workers=0, config_key="data.val"),
)
