# ImageNet 64x64 as MDS shards (1,281,167 training images, 1000 classes), written by
#   python tools/convert_dataset.py --source imagefolder --input ILSVRC/train --output data/imagenet-64 --resolution 64
# (centre crop and resize as ADM / EDM do).
data = dict(train=dict(type="MDSImageStream", path="data/imagenet-64/train", xflip=False, num_workers=4))
