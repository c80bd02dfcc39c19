"""Read images to evaluate or to compute reference statistics from: a folder of PNG/JPEG, an .npz, or MDS shards.

Every source yields batches of (uint8 images [B, 3, H, W], int64 labels [B] or None) for one rank; rank r of W
reads the contiguous slice [r N / W, (r + 1) N / W) of the N images, so W ranks together read each image once.
- folder: every *.png / *.jpg / *.jpeg below it, in sorted path order; labels from a `dataset.json` in EDM's
  format ({"labels": [[relative path, class], ...]}) when present;
- .npz: images under `images` (or `arr_0`, as OpenAI's ADM suite writes them), [N, H, W, C] or [N, C, H, W]
  uint8; labels under `labels` (or `arr_1`). The image array is read slice by slice from the archive;
- MDS shards (a folder with `index.json`): mosaicml-streaming's StreamingDataset, columns `image_key` (PNG/JPEG
  bytes, a PIL image or an HWC array) and `label_key`, read by global index so no sample is padded or repeated.
"""

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from diffscale.data.streaming import IMAGE_KEY, LABEL_KEY  # the columns tools/convert_dataset.py writes
from diffscale.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
Batch = tuple[torch.Tensor, torch.Tensor | None]


def rank_slice(total: int, rank: int, world_size: int) -> range:
    return range(total * rank // world_size, total * (rank + 1) // world_size)


def to_chw(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] or [N, C, H, W] (C in {1, 3}) -> uint8 [N, 3, H, W]; grey is repeated to RGB."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images [N, H, W, C] or [N, C, H, W], got {images.dtype} {images.shape}")
    x = torch.from_numpy(np.array(images))  # a copy: slices of a file buffer are read-only
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def _pil_to_array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


class ImageSource:
    has_labels = False

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, indices: range) -> Batch:
        raise NotImplementedError

    def batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        mine = rank_slice(len(self), rank, world_size)
        for start in range(mine.start, mine.stop, batch_size):
            yield self.read(range(start, min(start + batch_size, mine.stop)))


class FolderSource(ImageSource):
    def __init__(self, root: Path):
        self.root = root
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ConfigError(f"{root}: no {'/'.join(IMAGE_SUFFIXES)} images in this folder")
        self.labels = None
        if (root / "dataset.json").is_file():
            pairs = dict(json.loads((root / "dataset.json").read_text()).get("labels") or [])
            rel = [p.relative_to(root).as_posix() for p in self.files]
            if pairs and all(r in pairs for r in rel):
                self.labels = torch.tensor([int(pairs[r]) for r in rel], dtype=torch.int64)
        self.has_labels = self.labels is not None

    def __len__(self) -> int:
        return len(self.files)

    def read(self, indices: range) -> Batch:
        from PIL import Image

        arrays = []
        for i in indices:
            with Image.open(self.files[i]) as image:
                arrays.append(_pil_to_array(image))
        labels = self.labels[indices.start:indices.stop] if self.labels is not None else None
        return to_chw(np.stack(arrays)), labels


class NpzSource(ImageSource):
    def __init__(self, path: Path):
        self.path = path
        with zipfile.ZipFile(path) as archive:
            names = {n.removesuffix(".npy") for n in archive.namelist()}
        self.key = next((k for k in ("images", "arr_0") if k in names), None)
        if self.key is None:
            raise ConfigError(f"{path}: no 'images' (or 'arr_0') array; it has {sorted(names)}")
        label_key = next((k for k in ("labels", "arr_1") if k in names), None)
        with np.load(path) as f:  # labels are small: read them whole
            self.labels = torch.from_numpy(f[label_key].astype(np.int64)) if label_key else None
        self.has_labels = self.labels is not None
        with zipfile.ZipFile(path) as archive, archive.open(self.key + ".npy") as member:
            self.shape, self.dtype, self.offset = self._header(member)

    @staticmethod
    def _header(member) -> tuple[tuple[int, ...], np.dtype, int]:
        major, _ = np.lib.format.read_magic(member)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(member)
        if fortran:
            raise ConfigError("npz images in Fortran order are not supported; save a C-ordered array")
        return shape, dtype, member.tell()

    def __len__(self) -> int:
        return int(self.shape[0])

    def read(self, indices: range) -> Batch:
        row = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as archive, archive.open(self.key + ".npy") as member:
            member.seek(self.offset + indices.start * row)  # compressed members decompress up to here
            data = member.read(len(indices) * row)
        images = np.frombuffer(data, dtype=self.dtype).reshape(len(indices), *self.shape[1:])
        labels = self.labels[indices.start:indices.stop] if self.labels is not None else None
        return to_chw(images), labels


class MDSSource(ImageSource):
    def __init__(self, root: Path, image_key: str = IMAGE_KEY, label_key: str = LABEL_KEY):
        try:
            from streaming import StreamingDataset
        except ImportError:
            raise ConfigError("reading MDS shards needs mosaicml-streaming (pip install mosaicml-streaming)") from None
        self.dataset = StreamingDataset(local=str(root), shuffle=False, batch_size=1)
        self.image_key, self.label_key = image_key, label_key
        first = self.dataset[0]
        if image_key not in first:
            raise ConfigError(f"{root}: MDS samples have no column '{image_key}'; they have {sorted(first)}")
        self.has_labels = label_key in first

    def __len__(self) -> int:
        return int(self.dataset.size)

    def _image(self, value) -> np.ndarray:
        if isinstance(value, np.ndarray):
            return value if value.ndim == 3 else value[..., None].repeat(3, -1)
        if isinstance(value, (bytes, bytearray)):
            import io

            from PIL import Image

            value = Image.open(io.BytesIO(value))
        return _pil_to_array(value)

    def read(self, indices: range) -> Batch:
        samples = [self.dataset[i] for i in indices]
        images = np.stack([self._image(s[self.image_key]) for s in samples])
        labels = torch.tensor([int(s[self.label_key]) for s in samples]) if self.has_labels else None
        return to_chw(images), labels


def open_source(path: str | Path, image_key: str = IMAGE_KEY, label_key: str = LABEL_KEY) -> ImageSource:
    """The image source at `path`: MDS shards (a folder with index.json), a folder of images, or an .npz."""
    path = Path(path)
    if path.is_dir() and (path / "index.json").is_file():
        return MDSSource(path, image_key, label_key)
    if path.is_dir():
        return FolderSource(path)
    if path.suffix == ".npz" and path.is_file():
        return NpzSource(path)
    raise ConfigError(f"{path}: not a folder of images, an .npz file or a folder of MDS shards (index.json)")
