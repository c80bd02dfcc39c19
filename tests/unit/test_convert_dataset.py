"""tools/convert_dataset.py and diffscale/data/converters.py on small generated inputs of every source."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from diffscale.data.converters import ConversionError, convert
from diffscale.data.mds import MDSIndex, ShardStore
from tests.data_helpers import make_cifar10, make_tiny_imagenet
from tests.helpers import ROOT, run


def read_all(out_dir) -> tuple[dict, np.ndarray, np.ndarray]:
    """(metadata, x [N, ...], labels [N]) of a converted dataset, in stored order."""
    index, _ = MDSIndex.open(str(out_dir))
    columns = ShardStore(index).gather(np.arange(index.num_samples))
    return index.meta, columns["x"], columns["label"]


def test_tiny_imagenet_tool_reports_unreadable_and_keeps_labels(tmp_path):
    root = make_tiny_imagenet(tmp_path, num_classes=4, per_class=6, val_per_class=2)
    wnids = sorted((root / "wnids.txt").read_text().split())
    corrupt = root / "train" / wnids[2] / "images" / f"{wnids[2]}_99.JPEG"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    out = tmp_path / "train"
    proc = run([sys.executable, str(ROOT / "tools" / "convert_dataset.py"), "--source", "tiny-imagenet",
                "--input", str(tmp_path), "--output", str(out), "--workers", "2"], check=False, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "1 unreadable images skipped" in proc.stderr and str(corrupt) in proc.stderr
    meta, x, labels = read_all(out)
    assert meta["num_samples"] == 24 and meta["label_counts"] == [6, 6, 6, 6]
    assert meta["class_ids"] == wnids and meta["class_names"][1] == "class 1 name, synonym 1"
    assert meta["unreadable"] == [str(corrupt)] and meta["resolution"] == 64 and meta["channels"] == 3
    assert x.shape == (24, 3, 64, 64) and x.dtype == np.uint8
    # The first image of each class is grayscale (<wnid>_0.JPEG sorts first): three equal channels.
    gray = np.arange(24) % 6 == 0
    assert all(np.array_equal(x[i, 0], x[i, 1]) and np.array_equal(x[i, 1], x[i, 2]) for i in np.flatnonzero(gray))
    # The others' red level encodes the class in sorted-wnid order (wnids.txt itself is not sorted).
    red = x[~gray, 0].reshape(-1, 64 * 64).mean(axis=1)
    np.testing.assert_allclose(red, 20 + 40 * labels[~gray], atol=4)


def test_tiny_imagenet_val_split_and_tool_options(tmp_path):
    from tools.convert_dataset import main

    root = make_tiny_imagenet(tmp_path, num_classes=3, per_class=2, val_per_class=2, size=64)
    out = tmp_path / "val"
    assert main(["--source", "tiny-imagenet", "--input", str(root), "--output", str(out), "--split", "val"]) == 0
    meta, x, labels = read_all(out)
    assert meta["num_samples"] == 6 and labels.tolist() == [0, 1, 2, 0, 1, 2]  # val_annotations.txt order
    np.testing.assert_allclose(x[:, 0].reshape(6, -1).mean(axis=1), 20 + 40 * labels, atol=4)
    # An existing output is not replaced without --overwrite; a folder that is not a dataset never is.
    assert main(["--source", "tiny-imagenet", "--input", str(root), "--output", str(out)]) == 2
    assert main(["--source", "tiny-imagenet", "--input", str(root), "--output", str(out), "--overwrite",
                 "--resolution", "32"]) == 0
    assert read_all(out)[1].shape == (6, 3, 32, 32)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    assert main(["--source", "tiny-imagenet", "--input", str(root), "--output", str(tmp_path / "notes"),
                 "--overwrite"]) == 2
    assert (tmp_path / "notes" / "keep.txt").exists()
    assert main(["--source", "cifar10", "--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")]) == 2


def test_cifar10_python_batches(tmp_path):
    folder, images, labels = make_cifar10(tmp_path, per_batch=5, test=4)
    convert("cifar10", tmp_path, tmp_path / "train", progress=False)  # the parent folder is found too
    meta, x, got = read_all(tmp_path / "train")
    assert np.array_equal(x, images) and np.array_equal(got, labels)
    assert meta["class_names"][:3] == ["airplane", "automobile", "bird"] and meta["resolution"] == 32
    assert meta["label_counts"] == np.bincount(labels, minlength=10).tolist()
    convert("cifar10", folder, tmp_path / "test", split="val", progress=False)
    assert read_all(tmp_path / "test")[0]["num_samples"] == 4


def test_npz_layouts_and_latents(tmp_path):
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2, 2])
    np.savez_compressed(tmp_path / "nhwc.npz", images=nhwc, labels=y)  # compressed: loaded, not memory-mapped
    convert("npz", tmp_path / "nhwc.npz", tmp_path / "a", progress=False)
    meta, x, labels = read_all(tmp_path / "a")
    assert np.array_equal(x, nhwc.transpose(0, 3, 1, 2)) and np.array_equal(labels, y)
    assert meta["class_names"] == ["0", "1", "2"] and meta["label_counts"] == [2, 2, 3]

    latents = rng.standard_normal((5, 4, 8, 8)).astype(np.float32)  # precomputed latents: stored as given
    np.savez(tmp_path / "lat.npz", x=latents, y=np.arange(5), class_names=np.array(list("abcde")))
    convert("npz", tmp_path / "lat.npz", tmp_path / "b", progress=False)
    meta, x, labels = read_all(tmp_path / "b")
    assert x.dtype == np.float32 and np.array_equal(x, latents) and meta["class_names"] == list("abcde")
    with pytest.raises(ConversionError, match="cannot be resized"):
        convert("npz", tmp_path / "lat.npz", tmp_path / "c", resolution=4, progress=False)

    unlabelled = rng.integers(0, 256, (3, 1, 8, 8), dtype=np.uint8)  # NCHW, no labels: unconditional
    np.savez(tmp_path / "u.npz", images=unlabelled)
    convert("npz", tmp_path / "u.npz", tmp_path / "d", resolution=4, workers=2, progress=False)
    meta, x, labels = read_all(tmp_path / "d")
    assert x.shape == (3, 1, 4, 4) and meta["class_names"] == [] and labels.tolist() == [0, 0, 0]


def test_imagefolder_centre_crop(tmp_path):
    # 160 x 64 stripes: red | green (columns 48..111) | blue. Centre crop to 32: one 2x BOX halving (short side
    # 64 >= 2 * 32), no resize left (64 / 2 == 32), then the centre 32 columns, which are all green.
    stripes = np.zeros((64, 160, 3), np.uint8)
    stripes[:, :48, 0], stripes[:, 48:112, 1], stripes[:, 112:, 2] = 255, 255, 255
    for cls, n in (("dogs", 2), ("cats", 3)):
        (tmp_path / "in" / cls / "sub").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(stripes).save(tmp_path / "in" / cls / "sub" / f"{i}.png")
    Image.fromarray(stripes[:50, :30]).save(tmp_path / "in" / "cats" / "small.png")  # upsampled by BICUBIC
    with pytest.raises(ConversionError, match="--resolution is required"):
        convert("imagefolder", tmp_path / "in", tmp_path / "out", progress=False)
    convert("imagefolder", tmp_path / "in", tmp_path / "out", resolution=32, workers=2, progress=False)
    meta, x, labels = read_all(tmp_path / "out")
    assert meta["class_names"] == ["cats", "dogs"] and meta["label_counts"] == [4, 2]
    assert x.shape == (6, 3, 32, 32)
    green = np.zeros((3, 32, 32), np.uint8)
    green[1] = 255
    red = np.zeros((3, 32, 32), np.uint8)
    red[0] = 255
    assert np.array_equal(x[0], red)  # cats/small.png sorts first: all red
    assert all(np.array_equal(x[i], green) for i in range(1, 6))
    assert json.loads((tmp_path / "out" / "diffscale.json").read_text())["source"] == "imagefolder"
