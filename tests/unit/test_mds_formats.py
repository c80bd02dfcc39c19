"""MDSImageStream over MDS as mosaic's MDSWriter commonly writes it: compressed shards, png / jpeg / pil image
columns, extra columns the loader does not read; the order, the resume and the errors of the fixed-size path."""

import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from diffscale.data.streaming import MDSImageStream, scale_images
from diffscale.errors import ConfigError

N, SIDE = 16, 8
RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (N, SIDE, SIDE, 3), dtype=np.uint8)  # HWC, as PIL takes them
LABELS = RNG.integers(0, 10, N)
JPEGS = []
for _image in IMAGES:
    _buffer = io.BytesIO()
    Image.fromarray(_image).save(_buffer, format="JPEG", quality=90)
    JPEGS.append(_buffer.getvalue())

# name: (columns, compression, the value of 'x' for sample i)
DATASETS = {
    "zstd": ({"x": f"ndarray:uint8:3,{SIDE},{SIDE}", "label": "int"}, "zstd", lambda i: IMAGES[i].transpose(2, 0, 1)),
    "png": ({"x": "png", "label": "int"}, None, lambda i: Image.fromarray(IMAGES[i])),
    "jpeg": ({"x": "jpeg", "label": "int"}, None, lambda i: JPEGS[i]),  # bytes are stored as given
    "pil": ({"x": "pil", "label": "int"}, None, lambda i: Image.fromarray(IMAGES[i])),
    "name": ({"x": f"ndarray:uint8:3,{SIDE},{SIDE}", "label": "int", "name": "str"}, None,
             lambda i: IMAGES[i].transpose(2, 0, 1)),
    "png_gz_name": ({"x": "png", "label": "int", "name": "str"}, "gz", lambda i: Image.fromarray(IMAGES[i])),
}


def write(folder, columns: dict, compression: str | None, value, n: int = N, key: str = "x") -> str:
    """Samples {key: value(i), 'label', 'name' if a column} with mosaic's MDSWriter; returns the folder."""
    from streaming import MDSWriter  # seconds to import: only here

    # A small size limit: several shards, so batches straddle them
    with MDSWriter(out=str(folder), columns=columns, compression=compression, size_limit=1000) as writer:
        for i in range(n):
            extra = {"name": f"sample {i}"} if "name" in columns else {}
            writer.write({key: value(i), "label": int(LABELS[i]), **extra})
    return str(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("formats")
    return {name: write(root / name, *spec) for name, spec in DATASETS.items()}


def expected(name: str) -> np.ndarray:
    """uint8 [N, 3, H, W] the loader must return: the written images; JPEG: PIL's decode of the stored bytes."""
    if name == "jpeg":
        return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in JPEGS]).transpose(0, 3, 1, 2)
    return IMAGES.transpose(0, 3, 1, 2)


def stream(folder: str, **cfg) -> MDSImageStream:
    return MDSImageStream(folder, **{"batch_gpu": 4, "num_workers": 0, "shuffle": False, **cfg})


@pytest.mark.parametrize("name", list(DATASETS))
def test_batches_are_the_written_images_in_order(folders, name):
    s = stream(folders[name])
    assert (s.num_samples, s.shape, s.num_classes) == (N, (3, SIDE, SIDE), None)
    want = expected(name)
    for start in range(0, N, 4):
        batch = next(s)
        assert torch.equal(batch["x"], torch.from_numpy(scale_images(want[start:start + 4])))
        assert batch["label"].tolist() == LABELS[start:start + 4].tolist()


@pytest.mark.parametrize("name", ["zstd", "jpeg", "png_gz_name"])
def test_resume_gives_the_next_batch(folders, name):
    first = stream(folders[name], shuffle=True, xflip=True, seed=3)
    for _ in range(3):  # into the second epoch
        next(first)
    resumed = stream(folders[name], shuffle=True, xflip=True, seed=3)
    resumed.load_state_dict(first.state_dict())
    a, b = next(first), next(resumed)
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["label"], b["label"])


def test_workers_decode(folders):
    s = stream(folders["png_gz_name"], num_workers=1)
    batches = [next(s) for _ in range(N // 4)]
    assert not s.store._open  # this process opened no shard: the worker decompressed and decoded them
    s.close()
    x = torch.cat([b["x"] for b in batches])
    assert torch.equal(x, torch.from_numpy(scale_images(expected("png"))))


def test_images_of_another_shape_are_an_error(tmp_path):
    def image(i):
        side = 2 * SIDE if i == 5 else SIDE
        return Image.fromarray(np.zeros((side, side, 3), np.uint8))

    s = stream(write(tmp_path / "mixed", {"x": "png", "label": "int"}, None, image, n=8))
    next(s)
    with pytest.raises(ValueError, match=r"sample 5 has column 'x' of shape \(3, 16, 16\).*sample 0 has \(3, 8, 8\)"):
        next(s)


def test_errors_say_what_the_loader_reads(folders, tmp_path):
    unsupported = write(tmp_path / "bytes", {"x": "bytes", "label": "int"}, None, lambda i: IMAGES[i].tobytes(), n=2)
    with pytest.raises(ConfigError, match=r"column 'x' has the encoding 'bytes'.*png, jpeg, pil"):
        stream(unsupported)
    other_name = write(tmp_path / "image", {"image": "png", "label": "int"}, None,
                       lambda i: Image.fromarray(IMAGES[i]), n=2, key="image")
    with pytest.raises(ConfigError, match=r"has columns \['image', 'label'\], lacks \['x'\]"):
        stream(other_name)
    shutil.copytree(folders["zstd"], tmp_path / "lz4")  # a compression mosaic does not know
    index = json.loads((tmp_path / "lz4" / "index.json").read_text())
    for shard in index["shards"]:
        shard["compression"] = "lz4"
    (tmp_path / "lz4" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"compression 'lz4' is not one mosaic decompresses: br, bz2, gz, snappy"):
        stream(str(tmp_path / "lz4"))
