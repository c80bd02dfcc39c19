"""MDSImageStream: the training loader over MDS shards (tools/convert_dataset.py writes them).

Order. Epoch e visits a permutation of all N samples drawn from (seed, e); rank r of W takes every W-th entry
(the last N mod W of the permutation are left out of that epoch, different ones each epoch), so ranks and
nodes see disjoint shares. A rank's stream is its epochs back to back; a batch is the next `batch_gpu`
entries and may straddle epochs. The x-flip of a sample in epoch e is drawn from (seed, e) too.

State. Every batch is therefore a pure function of the cursor (epoch, position in this rank's share) and
the batch size, so `state_dict` is the cursor after the last batch handed out (not the prefetched ones), and
resume continues mid-epoch with exactly the batch the uninterrupted run would have produced, whatever
batch sizes came before. Changing `batch_gpu` (the curation hook switches b <-> B) restarts the prefetch
at the cursor: the next batch has the new size.

Speed. The main process only plans index arrays; DataLoader workers gather whole batches from memory-mapped
shards (diffscale/data/mds.py: one fancy index per shard touched; compressed shards are decompressed and png / jpeg /
pil images decoded there too, in the workers), flip them as uint8, and scale them to float when training on the CPU;
for a GPU the main process moves uint8 (pinned, non-blocking) and scales on the device.

Latents (`latents=True`, datasets written by tools/encode_latents.py). Each sample stores the SD-VAE posterior of
its image and of the image's mirror, moments [2, 2C, h, w] (mean and log-variance, unscaled). A batch takes the
mirror's moments where the epoch's x-flip says so (the VAE is not flip-equivariant, so a latent is never flipped
itself) and draws a fresh posterior sample z = (mean + exp(logvar / 2) * eps) * scaling_factor. eps comes from a
generator seeded by (seed, cursor at the batch start, rank): a batch is still a pure function of the cursor and its
size, so resume stays exact, and every epoch sees new noise.
"""

import atexit
import signal
import weakref
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from diffscale.data.mds import SUPPORTED_ENCODINGS, MDSIndex, ShardStore
from diffscale.errors import ConfigError, DataError
from diffscale.registry import DATASETS

IMAGE_KEY, LABEL_KEY = "x", "label"  # the columns tools/convert_dataset.py writes
MOMENTS_KEY = "moments"  # tools/encode_latents.py's instead of x: [2 (as is, mirrored), 2C (mean, logvar), h, w]
SD_VAE_SCALING_FACTOR = 0.18215  # z's scale when diffscale.json gives none (SD-VAE's, as models/sd_vae.py)
LATENT_NOISE_STREAM = 2  # a seed-sequence word that keeps the posterior noise apart from EpochOrder's draws


class EpochOrder:
    """This rank's sample ids and flips per epoch, and the batches cut from them (pure; runs in the main process)."""

    def __init__(self, num_samples: int, rank: int, world_size: int, seed: int, shuffle: bool, xflip: bool):
        if num_samples < world_size:
            raise ValueError(f"{num_samples} samples cannot be shared by {world_size} ranks")
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.seed, self.shuffle, self.xflip = seed, shuffle, xflip
        self.per_rank = num_samples // world_size  # samples of one epoch on one rank
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray | None]:
        """ids int64 [per_rank] and flips bool [per_rank] (None without xflip) of this rank in `epoch`."""
        if epoch not in self._cache:
            rng = np.random.default_rng([self.seed, epoch])  # a seed sequence: no collisions between (seed, epoch)
            perm = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
            ids = perm[self.rank:self.per_rank * self.world_size:self.world_size].astype(np.int64)
            # Flips are indexed by sample id, drawn after the permutation: the same whatever the world size.
            flips = (rng.random(self.num_samples) < 0.5)[ids] if self.xflip else None
            self._cache = {e: v for e, v in self._cache.items() if e == epoch - 1}  # batches straddle epochs
            self._cache[epoch] = (ids, flips)
        return self._cache[epoch]

    def take(self, epoch: int, pos: int, n: int) -> tuple[np.ndarray, np.ndarray | None, int, int]:
        """The next `n` ids and flips from cursor (epoch, pos), and the cursor after them."""
        ids, flips = [], []
        while n > 0:
            epoch_ids, epoch_flips = self.epoch(epoch)
            k = min(n, self.per_rank - pos)
            ids.append(epoch_ids[pos:pos + k])
            if epoch_flips is not None:
                flips.append(epoch_flips[pos:pos + k])
            pos, n = pos + k, n - k
            if pos == self.per_rank:
                epoch, pos = epoch + 1, 0
        return np.concatenate(ids), np.concatenate(flips) if flips else None, epoch, pos


class _BatchReader(Dataset):
    """Map-style dataset whose 'index' is a whole batch request (ids, flips, cursor after it, cursor at its start).

    With `to_float` (training on the CPU) the workers also scale to float32, off the training process; for a
    GPU they return uint8, which crosses PCIe in a quarter of the bytes and is scaled on the device.
    `latents` = (scaling_factor, seed, rank): the workers draw posterior samples (float32 for either device)."""

    def __init__(self, store: ShardStore, to_float: bool, latents: tuple[float, int, int] | None = None,
                 num_classes: int | None = None):
        self.store, self.to_float, self.latents, self.num_classes = store, to_float, latents, num_classes
        self.names = (MOMENTS_KEY if latents is not None else IMAGE_KEY, LABEL_KEY)  # other columns are not decoded

    def __getitem__(self, request: tuple) -> dict:
        """The batch, or {'error': one line naming the shard and record} for the main process to raise: a worker's
        own exception would arrive wrapped in its traceback."""
        try:
            return self._read(*request)
        except DataError as exc:
            return {"error": str(exc)}
        except Exception as exc:  # an unexpected failure still names the data it was reading
            return {"error": f"{self.store.where(int(request[0][0]))} and the {len(request[0]) - 1} samples after "
                             f"it cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())})"}

    def _read(self, ids: np.ndarray, flips: np.ndarray | None, epoch: int, pos: int, start: tuple) -> dict:
        columns = self.store.gather(ids, self.names)  # decompresses / decodes here, in the worker
        label = columns[LABEL_KEY].reshape(len(ids))
        if self.num_classes is not None:  # one vectorised check: a label the model's one-hot cannot take
            bad = np.flatnonzero((label < 0) | (label >= max(self.num_classes, 1)))
            if bad.size:
                raise DataError(f"{self.store.where(int(ids[bad[0]]))}: label {int(label[bad[0]])} is outside "
                                f"[0, {self.num_classes}) (the classes diffscale.json lists)")
        if self.latents is not None:
            scale, seed, rank = self.latents
            rng = np.random.default_rng([seed, *start, rank, LATENT_NOISE_STREAM])
            x = sample_posterior(columns[MOMENTS_KEY], flips, scale, rng)
        else:
            x = columns[IMAGE_KEY]  # [n, C, H, W] as stored
            if flips is not None and flips.any():
                x[flips] = x[flips][..., ::-1]  # the right side is a copy, so no aliasing
            if self.to_float:
                x = scale_images(x) if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
        label = label.astype(np.int64)
        return {"x": torch.from_numpy(x), "label": torch.from_numpy(label), "epoch": epoch, "pos": pos}


INV_HALF_RANGE = 1 / 127.5


def scale_images(x: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1], x / 127.5 - 1 as EDM (0 -> -1 and 255 -> 1 exactly). Multiplying by the
    reciprocal, as CUDA divides by a scalar, makes this bit-equal to the device path in __next__."""
    out = x.astype(np.float32)
    out *= np.float32(INV_HALF_RANGE)
    out -= 1
    return out


def sample_posterior(moments: np.ndarray, flips: np.ndarray | None, scale: float,
                     rng: np.random.Generator) -> np.ndarray:
    """float32 [n, C, h, w] z = (mean + exp(logvar / 2) * eps) * scale from stored moments [n, 2, 2C, h, w]
    (index 1 of the second axis where `flips`, else 0), eps ~ N(0, 1) from `rng`; one vectorised draw."""
    picked = moments[np.arange(len(moments)), flips.astype(np.intp)] if flips is not None else moments[:, 0]
    picked = picked.astype(np.float32)
    c = picked.shape[1] // 2
    z = np.exp(np.float32(0.5) * picked[:, c:])
    z *= rng.standard_normal(z.shape, dtype=np.float32)
    z += picked[:, :c]
    z *= np.float32(scale)
    return z


def _requests(order: EpochOrder, epoch: int, pos: int, batch_gpu: int) -> Iterator[tuple]:
    while True:
        start = (epoch, pos)  # seeds a latent batch's posterior noise
        ids, flips, epoch, pos = order.take(epoch, pos, batch_gpu)
        yield ids, flips, epoch, pos, start


def _ignore_sigterm(worker_id: int) -> None:
    # A job scheduler signals the whole process group; the trainer finishes its step and saves on SIGTERM, which
    # needs the workers alive (a dead worker raises in the main process at once). They exit with the main process:
    # the DataLoader's shutdown at _close_all, or their watchdog if the main process is killed.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


_LIVE: "weakref.WeakSet[MDSImageStream]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # atexit runs this before multiprocessing's exit hook (registered earlier, when torch was imported), which
    # would SIGTERM the workers and join them: ignoring SIGTERM, they must be shut down the DataLoader's way first.
    for stream in list(_LIVE):
        stream.close()


@DATASETS.register_module()
class MDSImageStream:
    """Endless batches {'x': float32 [batch_gpu, C, H, W] on `device`, 'label': int64 [batch_gpu]} from the MDS
    dataset at `path`. uint8 images are scaled to [-1, 1]; float data (latents) are returned as stored, in
    float32; with `latents` posterior samples of SD-VAE moments (module docstring) are returned, [C, h, w] =
    (4, resolution / 8, resolution / 8). The trainer passes batch_gpu, rank, world_size, seed and device;
    `batch_gpu` may be changed between batches."""

    def __init__(
        self,
        path: str,  # dataset directory (index.json, shards, diffscale.json), or a remote URI (s3://...) with `local`
        batch_gpu: int,  # examples per batch on this rank; mutable (the curation hook asks for super-batches)
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,  # order and flips; the trainer passes train_cfg.seed
        device: str | torch.device = "cpu",
        local: str | None = None,  # cache directory when `path` is remote: shards are fetched on first use
        xflip: bool = False,  # random horizontal flips (a fair coin per sample and epoch)
        shuffle: bool = True,  # False: every epoch in stored order (still partitioned across ranks)
        num_workers: int = 2,  # DataLoader worker processes gathering batches; 0 reads in this process
        prefetch_factor: int = 2,  # batches in flight per worker
        download_timeout_s: float = 60.0,
        config_key: str = "data.train",  # how errors name this loader's config entry
        latents: bool = False,  # SD-VAE moments (tools/encode_latents.py): draw z from the posterior per sample
        verify: bool = False,  # check every shard against its content hash first (reads the dataset once)
    ):
        self.index, remote = MDSIndex.open(path, local, config_key, download_timeout_s)
        self.latents, self.config_key = latents, config_key
        self._check_columns(path, config_key)
        self.scaling_factor = float(self.index.meta.get("scaling_factor", SD_VAE_SCALING_FACTOR))
        self.seed, self.rank = seed, rank
        self.store = ShardStore(self.index, remote, download_timeout_s)
        if verify:  # every rank checks every shard: no collective while the trainer is being built
            try:
                self.store.verify_hashes()
            except DataError as exc:
                raise DataError(f"{config_key}.verify: {exc}") from None
        self.order = EpochOrder(self.index.num_samples, rank, world_size, seed, shuffle, xflip)
        self.batch_gpu, self.device = batch_gpu, torch.device(device)
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        self.epoch, self.pos = 0, 0  # cursor after the last batch handed out
        self._batches: Iterator[dict] | None = None  # live DataLoader iterator, prefetching ahead of the cursor
        self._batches_size = 0  # the batch size it was started with

    def _check_columns(self, path: str, config_key: str) -> None:
        """The columns `latents` needs, or an error saying which setting or tool fits the dataset."""
        columns, stored = self.index.columns, sorted(self.index.column_encodings)
        image = MOMENTS_KEY if self.latents else IMAGE_KEY
        if not self.latents and IMAGE_KEY not in stored and MOMENTS_KEY in columns:
            raise ConfigError(f"{config_key}.path: '{path}' holds SD-VAE latents (column '{MOMENTS_KEY}', "
                              f"tools/encode_latents.py); set {config_key}.latents=True")
        if self.latents and MOMENTS_KEY not in stored:
            raise ConfigError(f"{config_key}.latents=True: '{path}' has columns {stored}, not "
                              f"'{MOMENTS_KEY}'; encode images into latents with tools/encode_latents.py")
        for name in (image, LABEL_KEY):
            if name in self.index.unread:
                raise ConfigError(f"{config_key}.path: '{path}' column '{name}' has the encoding "
                                  f"'{self.index.unread[name]}', which the loader does not read; it reads "
                                  + SUPPORTED_ENCODINGS)
        missing = [name for name in (image, LABEL_KEY) if name not in stored]
        if missing:
            raise ConfigError(f"{config_key}.path: '{path}' has columns {stored}, lacks {missing}: the loader reads "
                              f"the image from column '{image}' and the class from '{LABEL_KEY}' (the names "
                              "tools/convert_dataset.py writes); rename the columns when writing the shards")
        if self.latents and (len(columns[MOMENTS_KEY].shape) != 4 or columns[MOMENTS_KEY].shape[0] != 2
                             or columns[MOMENTS_KEY].shape[1] % 2):
            raise ConfigError(f"{config_key}.path: '{path}' column '{MOMENTS_KEY}' has shape "
                              f"{columns[MOMENTS_KEY].shape}, expected [2 (image, mirror), 2C (mean, logvar), h, w]")

    # ------------------------------------------------------------------ what the dataset holds
    @property
    def num_samples(self) -> int:
        return self.index.num_samples

    @property
    def shape(self) -> tuple[int, ...]:
        """(C, H, W) of one example (latents: of one posterior sample z)."""
        if self.latents:
            _, channels2, h, w = self.index.columns[MOMENTS_KEY].shape
            return (channels2 // 2, h, w)
        return self.index.columns[IMAGE_KEY].shape

    @property
    def resolution(self) -> int:
        return self.shape[-1]

    @property
    def class_names(self) -> list[str]:
        return list(self.index.meta.get("class_names", []))

    @property
    def num_classes(self) -> int | None:
        """From the converter's metadata (0: unlabelled); None for MDS data written without diffscale.json."""
        return len(self.index.meta["class_names"]) if "class_names" in self.index.meta else None

    # ------------------------------------------------------------------ the stream
    def __iter__(self) -> "MDSImageStream":
        return self

    def __next__(self) -> dict:
        if self._batches is None or self._batches_size != self.batch_gpu:
            self._start()
        batch = next(self._batches)
        if "error" in batch:
            raise DataError(f"{self.config_key}: {batch['error']}")
        self.epoch, self.pos = batch["epoch"], batch["pos"]
        x = batch["x"].to(self.device, non_blocking=True)
        x = x.float().mul_(INV_HALF_RANGE).sub_(1) if x.dtype == torch.uint8 else x.float()  # as scale_images
        return {"x": x, "label": batch["label"].to(self.device, non_blocking=True)}

    def _start(self) -> None:
        """(Re)start the workers' prefetch at the cursor with the current batch size."""
        self.close()
        workers = self.num_workers
        latents = (self.scaling_factor, self.seed, self.rank) if self.latents else None
        num_classes = self.num_classes if self.num_classes else None  # 0 (unlabelled) and None: no check
        reader = _BatchReader(self.store, to_float=self.device.type != "cuda", latents=latents,
                              num_classes=num_classes)
        loader = DataLoader(
            reader, batch_size=None,  # each request is already a whole batch
            sampler=_requests(self.order, self.epoch, self.pos, self.batch_gpu),
            num_workers=workers, prefetch_factor=self.prefetch_factor if workers else None,
            pin_memory=self.device.type == "cuda", worker_init_fn=_ignore_sigterm if workers else None)
        self._batches, self._batches_size = iter(loader), self.batch_gpu
        if workers:
            _LIVE.add(self)

    def close(self) -> None:
        """Stop the workers (they are restarted by the next batch)."""
        self._batches = None

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "num_samples": self.num_samples,
                "world_size": self.order.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state["num_samples"] != self.num_samples or state["world_size"] != self.order.world_size:
            raise ValueError(
                f"loader state of {state['num_samples']} samples on {state['world_size']} ranks cannot resume "
                f"{self.num_samples} samples on {self.order.world_size} ranks ({self.index.root})")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.close()
