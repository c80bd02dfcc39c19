"""tools/convert_dataset.py and diffscale/data/converters.py on small generated inputs of every source."""

import json
import os
import pickle
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from diffscale.data.converters import ConversionError, convert
from diffscale.data.mds import MDSIndex, ShardStore
from tests.data_helpers import make_cifar10, make_imagenet64, make_tiny_imagenet, write_imagenet64_pickle
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


# ---------------------------------------------------------------------------------------------- imagenet64
def test_imagenet64_pickles_and_zips_read_back_exactly(tmp_path):
    from tools.convert_dataset import main

    expected = make_imagenet64(tmp_path / "in")
    names = [str(k) for k in range(1000)]
    for split in ("train", "val"):
        images, labels = expected[split]
        for name, source in (("unpacked", tmp_path / "in"), ("zips", tmp_path / "in" / "zips")):
            out = tmp_path / f"{name}_{split}"
            convert("imagenet64", source, out, split=split, progress=False)
            meta, x, got = read_all(out)
            assert x.dtype == np.uint8 and np.array_equal(x, images), (name, split)
            assert np.array_equal(got, labels) and got.min() == 0 and got.max() == 999
            assert meta["class_ids"] == names and meta["class_names"] == names
            assert meta["label_counts"] == np.bincount(labels, minlength=1000).tolist()
            assert meta["resolution"] == 64 and meta["source"] == "imagenet64" and meta["split"] == split
    # One zip given directly: the batches it holds (part1.zip: batch 1 only).
    convert("imagenet64", tmp_path / "in" / "zips" / "Imagenet64_train_part1.zip", tmp_path / "one", progress=False)
    assert np.array_equal(read_all(tmp_path / "one")[1], expected["train"][0][:5])
    # The tool, both splits, resized to 32: a 2x BOX halving, i.e. the 2x2 mean (PIL rounds it).
    out = tmp_path / "tool"
    assert main(["--source", "imagenet64", "--input", str(tmp_path / "in" / "zips"), "--output", str(out),
                 "--split", "all", "--resolution", "32", "--workers", "2"]) == 0
    for split in ("train", "val"):
        images, labels = expected[split]
        meta, x, got = read_all(out / split)
        pooled = images.reshape(len(images), 3, 32, 2, 32, 2).astype(np.float64).mean(axis=(3, 5))
        assert x.shape == (len(images), 3, 32, 32) and np.array_equal(got, labels)
        assert np.abs(x - pooled).max() <= 1


def test_imagenet64_refuses_bad_labels_shapes_and_missing_files(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (3, 12288), dtype=np.uint8)
    for bad in (0, 1001):
        folder = tmp_path / f"label{bad}"
        folder.mkdir()
        write_imagenet64_pickle(folder / "val_data", data, [5, bad, 7])
        with pytest.raises(ConversionError, match=rf"val_data: label {bad} \(image 1, 1 in all\) is outside 1\.\.1000"):
            convert("imagenet64", folder, tmp_path / "out", split="val", progress=False)
        assert not (tmp_path / "out").exists()
    cases = {
        "shape": ({"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [1, 2, 3]},
                  r"'data' is uint8 \[3, 3072\]; expected uint8 \[N, 12288\]"),
        "dtype": ({"data": data.astype(np.float32), "labels": [1, 2, 3]}, r"'data' is float32 \[3, 12288\]"),
        "count": ({"data": data, "labels": [1, 2]}, r"3 images but 'labels' is int64 \[2\]"),
        "keys": ({"images": data}, r"holds \['images'\]; expected a dict with 'data' and 'labels'"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).mkdir()
        with open(tmp_path / name / "val_data", "wb") as f:
            pickle.dump(content, f)
        with pytest.raises(ConversionError, match=rf"{name}/val_data: {message}"):
            convert("imagenet64", tmp_path / name, tmp_path / "out", split="val", progress=False)
    # A later batch that is wrong fails the conversion and leaves no partial dataset behind.
    (tmp_path / "later").mkdir()
    write_imagenet64_pickle(tmp_path / "later" / "train_data_batch_1", data, [1, 2, 3])
    write_imagenet64_pickle(tmp_path / "later" / "train_data_batch_2", data, [1, 2, 1001])
    with pytest.raises(ConversionError, match=r"train_data_batch_2: label 1001"):
        convert("imagenet64", tmp_path / "later", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    # Missing files: nothing at all, a gap in the batches, a zip without the split's members.
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match=r"empty: no train_data_batch_1\.\.10 .* Imagenet64_train_part1\.zip"):
        convert("imagenet64", tmp_path / "empty", tmp_path / "out", progress=False)
    (tmp_path / "later" / "train_data_batch_2").rename(tmp_path / "later" / "train_data_batch_3")
    with pytest.raises(ConversionError, match=r"train_data_batch_2 missing \(found train_data_batch_1, train_data_b"):
        convert("imagenet64", tmp_path / "later", tmp_path / "out", progress=False)
    with zipfile.ZipFile(tmp_path / "Imagenet64_train_part1.zip", "w") as zf:
        zf.writestr("readme.txt", "no batches here")
    with pytest.raises(ConversionError, match=r"Imagenet64_train_part1\.zip: no train_data_batch_1\.\.10 member"):
        convert("imagenet64", tmp_path / "Imagenet64_train_part1.zip", tmp_path / "out", progress=False)
    with pytest.raises(ConversionError, match=r"Imagenet64_train_part1\.zip: no val_data member"):
        convert("imagenet64", tmp_path / "Imagenet64_train_part1.zip", tmp_path / "out", split="val", progress=False)
    (tmp_path / "notzip.zip").write_bytes(b"PK not really")
    with pytest.raises(ConversionError, match=r"notzip\.zip: not a readable zip"):
        convert("imagenet64", tmp_path / "notzip.zip", tmp_path / "out", progress=False)


class RunsACommand:
    """Unpickling this with plain pickle.load would run the command: __reduce__ names os.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_pickles_calling_a_global_are_refused_and_nothing_runs(tmp_path, capfd):
    marker = tmp_path / "pwned"
    evil = RunsACommand(f"echo pwned; touch {marker}")
    system = f"{os.system.__module__}.system"  # posix.system on Linux
    (tmp_path / "in64").mkdir()
    with open(tmp_path / "in64" / "val_data", "wb") as f:
        pickle.dump({"data": evil, "labels": [1]}, f)
    with pytest.raises(ConversionError, match=rf"in64/val_data: refusing to unpickle the global {system}"):
        convert("imagenet64", tmp_path / "in64", tmp_path / "out", split="val", progress=False)
    with zipfile.ZipFile(tmp_path / "Imagenet64_val.zip", "w") as zf:
        zf.write(tmp_path / "in64" / "val_data", "val_data")
    with pytest.raises(ConversionError, match=rf"Imagenet64_val\.zip:val_data: refusing to unpickle .* {system}"):
        convert("imagenet64", tmp_path / "Imagenet64_val.zip", tmp_path / "out", split="val", progress=False)
    # cifar10 reads its pickles through the same restricted unpickler.
    folder, _, _ = make_cifar10(tmp_path, per_batch=2, test=2)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": evil}, f, protocol=2)
    with pytest.raises(ConversionError, match=rf"data_batch_3: refusing to unpickle the global {system}"):
        convert("cifar10", folder, tmp_path / "out", progress=False)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"a"], b"x": RunsACommand(f"touch {marker}")}, f)
    with pytest.raises(ConversionError, match=rf"batches\.meta: refusing to unpickle the global {system}"):
        convert("cifar10", folder, tmp_path / "out", split="val", progress=False)
    assert not marker.exists() and "pwned" not in capfd.readouterr().out
    assert not (tmp_path / "out").exists()
