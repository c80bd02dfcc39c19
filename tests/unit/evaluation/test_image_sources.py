"""Image sources: a folder (with EDM's dataset.json labels), an .npz (plain and compressed, NHWC and NCHW) and MDS
shards give the same images and labels, and W ranks read each image exactly once."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffscale.errors import ConfigError
from diffscale.evaluation.image_sources import open_source, rank_slice

N = 7


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (N, 8, 6, 3), dtype=np.uint8), rng.integers(0, 10, N)


def read_all(source, batch: int, world: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    images, labels = [], []
    for rank in range(world):
        for x, y in source.batches(batch, rank, world):
            images.append(x)
            labels.append(y)
    return torch.cat(images), None if labels[0] is None else torch.cat(labels)


def test_rank_slices_cover_every_index_once():
    for total in (0, 1, 7, 100):
        for world in (1, 2, 3, 8):
            got = [i for r in range(world) for i in rank_slice(total, r, world)]
            assert got == list(range(total))


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "compressed", "adm"])
def test_npz(data, tmp_path, layout):
    images, labels = data
    path = tmp_path / "x.npz"
    if layout == "nchw":
        np.savez(path, images=images.transpose(0, 3, 1, 2), labels=labels)
    elif layout == "compressed":
        np.savez_compressed(path, images=images, labels=labels)
    elif layout == "adm":  # OpenAI's ADM evaluation files: arr_0 (and arr_1 for labels)
        np.savez(path, images, labels)
    else:
        np.savez(path, images=images, labels=labels)
    source = open_source(path)
    x, y = read_all(source, batch=3, world=2)
    assert x.dtype == torch.uint8 and x.shape == (N, 3, 8, 6)
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2)) and torch.equal(y, torch.from_numpy(labels))


def test_folder_with_labels(data, tmp_path):
    images, labels = data
    pairs = []
    for i, image in enumerate(images):
        rel = f"{i // 4:05d}/img{i:08d}.png"
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(tmp_path / rel)
        pairs.append([rel, int(labels[i])])
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": pairs}))
    x, y = read_all(open_source(tmp_path), batch=2, world=3)
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2)) and y.tolist() == labels.tolist()
    (tmp_path / "dataset.json").unlink()
    assert not open_source(tmp_path).has_labels


def test_mds_shards(data, tmp_path):
    from streaming import MDSWriter

    images, labels = data
    with MDSWriter(out=str(tmp_path / "mds"), columns={"image": "png", "label": "int"}, size_limit=200) as writer:
        for image, label in zip(images, labels, strict=True):
            writer.write({"image": Image.fromarray(image), "label": int(label)})
    source = open_source(tmp_path / "mds", image_key="image")  # a dataset written by other tools: PNG column
    assert len(source) == N and source.has_labels
    x, y = read_all(source, batch=4, world=2)
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2)) and y.tolist() == labels.tolist()


def test_mds_shards_of_the_converter_by_default(tmp_path):
    """The shards tools/convert_dataset.py writes (raw uint8 arrays under 'x') are read with the default keys."""
    from tests.data_helpers import make_mds

    path, x, labels = make_mds(tmp_path / "train", num_samples=6, shape=(3, 8, 8))
    got, y = read_all(open_source(path), batch=4, world=1)
    assert torch.equal(got, torch.from_numpy(x)) and y.tolist() == labels.tolist()


def test_unknown_source_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a folder of images, an .npz"):
        open_source(tmp_path / "missing.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .png/.jpg/.jpeg images"):
        open_source(tmp_path / "empty")
