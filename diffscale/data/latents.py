"""Images -> SD-VAE posterior moments in MDS shards (the logic of tools/encode_latents.py).

Format. Every sample is {'moments': [2, 8, h, w], 'label': int64}: index 0 encodes the ADM-centre-cropped image,
index 1 its horizontal mirror (the VAE is not flip-equivariant, so x-flip augmentation needs both); channels 0..3
are the posterior mean, 4..7 its log-variance, unscaled. The training loader (MDSImageStream(latents=True)) draws
z = (mean + exp(logvar / 2) * eps) * scaling_factor afresh at every epoch. Both columns have fixed sizes, so
diffscale/data/mds.py memory-maps them. float16 suffices: |mean| stays within a few tens (unscaled latents have a
std of about 1 / 0.18215 = 5.5), where fp16's 11 significant bits round by at most 0.016 (0.3% of that std), and
the log-variance lies in [-30, 20] (the VAE clamps it), rounded by at most 0.008: the posterior's std changes by
under 0.4%. Both are far inside fp16's range (65504), and a non-finite value stops the encode.

Order and ranks. The N input samples are cut into parts of `shard_samples` consecutive samples; part k is
written alone to <out>/part_<k>/ (its own MDS index and shards), by rank (position of k among the parts still to
do) mod W. The merged <out>/index.json lists every part's shards in part order, so output sample i is input sample
i and each part's bytes (its batches included) do not depend on the world size: W processes write what one does.

Resume. A part is written under a temporary name and renamed when complete, and <out>/encode_latents.json records
the arguments, so a rerun with the same ones (any world size) encodes only the parts that are missing; a rerun
with other arguments is refused. Rank 0 then merges the index, writes diffscale.json and reads the result back.
"""

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from diffscale.data.converters import (
    ConversionError,
    center_crop_resize,
    check_against_mosaic,
    check_hashes,
    decode_image,
    list_imagefolder,
)
from diffscale.data.mds import INDEX_FILE, META_FILE, WRITE_HASHES, MDSIndex, ShardStore
from diffscale.data.streaming import IMAGE_KEY, INV_HALF_RANGE, LABEL_KEY, MOMENTS_KEY
from diffscale.utils import dist

SOURCES = ("imagefolder", "mds")
DTYPES = ("float16", "float32")
MANIFEST_FILE = "encode_latents.json"  # the arguments of an encode, to resume it (and refuse other arguments)
SHARD_BYTES = 1 << 26  # a part's size when shard_samples is not given: mosaic's default shard size, 64 MiB
LATENT_CHANNELS, DOWNSAMPLE = 4, 8  # SD-VAE


def part_name(k: int) -> str:
    return f"part_{k:05d}"


# ---------------------------------------------------------------------------------------------- input
@dataclass
class ImageInput:
    """The N input images in order with their labels; `images(ids)` decodes uint8 [n, 3, R, R]."""

    source: str
    path: Path
    resolution: int
    labels: np.ndarray  # int64 [N]
    class_ids: list[str]
    class_names: list[str]
    files: list[str] | None = None  # imagefolder
    store: ShardStore | None = None  # mds

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, ids: np.ndarray, pool: Pool | None = None) -> np.ndarray:
        if self.files is not None:
            tasks = [(self.files[i], self.resolution) for i in ids]
            return np.stack(pool.map(_decode, tasks) if pool else list(map(_decode, tasks)))
        x = self.store.gather(np.asarray(ids, dtype=np.int64))[IMAGE_KEY]
        if x.shape[2:] == (self.resolution, self.resolution):
            return x
        crops = [center_crop_resize(Image.fromarray(image.transpose(1, 2, 0)), self.resolution) for image in x]
        return np.stack([np.asarray(c).transpose(2, 0, 1) for c in crops])


def _decode(task: tuple[str, int]) -> np.ndarray:
    path, resolution = task
    try:
        return decode_image(path, resolution)
    except Exception as exc:  # any decoder's error; skipping the image would shift every later sample
        raise ConversionError(f"{path}: unreadable ({type(exc).__name__}: {exc}); remove it from --input") from exc


def open_input(source: str, path: Path, resolution: int) -> ImageInput:
    """An imagefolder (one folder per class, as tools/convert_dataset.py reads it) or an MDS image dataset that
    tools/convert_dataset.py wrote (column 'x' uint8 [3, H, W], 'label')."""
    if source not in SOURCES:
        raise ConversionError(f"--source {source}: expected one of {', '.join(SOURCES)}")
    if not path.exists():
        raise ConversionError(f"--input {path}: not found")
    if source == "imagefolder":
        listing = list_imagefolder(path)
        if not listing.files:
            raise ConversionError(f"--input {path}: no images found for --source imagefolder")
        labels = np.array([label for _, label in listing.files], dtype=np.int64)
        return ImageInput(source, path, resolution, labels, listing.class_ids, listing.class_names,
                          files=[p for p, _ in listing.files])
    index, _ = MDSIndex.open(str(path), key="--input")
    if MOMENTS_KEY in index.columns:
        raise ConversionError(f"--input {path}: already holds latents (column '{MOMENTS_KEY}')")
    x = index.columns.get(IMAGE_KEY)
    if x is None or x.dtype != np.uint8 or len(x.shape) != 3 or x.shape[0] != 3 or LABEL_KEY not in index.columns:
        raise ConversionError(f"--input {path}: expected columns 'x' uint8 [3, H, W] and 'label' (as "
                              f"tools/convert_dataset.py writes), found {sorted(index.columns)}"
                              + (f" with x {x.dtype} {list(x.shape)}" if x is not None else ""))
    store = ShardStore(index)
    ids = list(index.meta.get("class_ids", []))
    return ImageInput(source, path, resolution, store.column(LABEL_KEY).astype(np.int64), ids,
                      list(index.meta.get("class_names", ids)), store=store)


# ---------------------------------------------------------------------------------------------- encoding
def encode_batches(vae: torch.nn.Module, batches: Iterable[np.ndarray], device: torch.device) -> Iterator[np.ndarray]:
    """Moments float32 [n, 2, 8, h, w] (image, mirror; mean, logvar) of each uint8 [n, 3, H, W] batch: the tool's
    encode loop, one VAE forward of the 2n images per batch, bf16 autocast on CUDA and fp32 elsewhere."""
    cuda = device.type == "cuda"
    with torch.inference_mode():
        for images in batches:
            x = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True)
            x = x.float().mul_(INV_HALF_RANGE).sub_(1)  # [-1, 1] exactly as the image loader scales
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                mean, logvar = vae.encode_moments(torch.cat([x, x.flip(-1)]))
            moments = torch.cat([mean, logvar], dim=1).float()  # [2n, 8, h, w]
            yield moments.unflatten(0, (2, len(images))).transpose(0, 1).cpu().numpy()


def prefetch(items: Iterator, depth: int = 1) -> Iterator:
    """`items` computed `depth` ahead in a thread: image decoding overlaps the VAE forward."""
    with ThreadPoolExecutor(1) as ex:
        queue = [ex.submit(next, items, None) for _ in range(depth)]
        while (item := queue.pop(0).result()) is not None:
            queue.append(ex.submit(next, items, None))
            yield item


# ---------------------------------------------------------------------------------------------- writing
def write_part(part_dir: Path, batches: Iterable[np.ndarray], labels: np.ndarray, dtype: str) -> None:
    """Write moments batches [n, 2, 2C, h, w] with their labels as one MDS directory, under a temporary name
    renamed to `part_dir` once complete (a killed run leaves no part that looks finished)."""
    from streaming import MDSWriter  # imported here: `streaming` takes seconds to import

    tmp = part_dir.with_name(f".{part_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    written, columns = 0, None
    writer = None
    try:
        for batch in batches:
            if writer is None:
                columns = {MOMENTS_KEY: f"ndarray:{dtype}:{','.join(map(str, batch.shape[1:]))}", LABEL_KEY: "int64"}
                writer = MDSWriter(out=str(tmp), columns=columns, size_limit=SHARD_BYTES,
                                   hashes=list(WRITE_HASHES))
            for moments in batch.astype(dtype, copy=False):
                writer.write({MOMENTS_KEY: moments, LABEL_KEY: int(labels[written])})
                written += 1
    finally:
        if writer is not None:
            writer.finish()
    if written != len(labels):
        raise ConversionError(f"{part_dir}: wrote {written} samples, expected {len(labels)}")
    os.replace(tmp, part_dir)


def merge_parts(out_dir: Path, num_parts: int) -> None:
    """<out>/index.json listing the shards of part_0, part_1, ... in order (basenames relative to <out>)."""
    shards = []
    for k in range(num_parts):
        for shard in json.loads((out_dir / part_name(k) / INDEX_FILE).read_text())["shards"]:
            for key in ("raw_data", "zip_data"):
                if shard.get(key):
                    shard[key]["basename"] = f"{part_name(k)}/{shard[key]['basename']}"
            shards.append(shard)
    tmp = out_dir / f"{INDEX_FILE}.tmp"
    tmp.write_text(json.dumps({"shards": shards, "version": 2}))
    os.replace(tmp, out_dir / INDEX_FILE)


def verify_latents(out_dir: Path, meta: dict, labels: np.ndarray) -> None:
    """Read the output back: count and labels in input order (hence the histogram), and mosaic's own reader
    agrees with our memory-mapped one on the first and the last sample."""
    index, _ = MDSIndex.open(str(out_dir), key="--output")
    store = ShardStore(index)
    got = store.column(LABEL_KEY)
    counts = np.bincount(got, minlength=len(meta["label_counts"])).tolist() if got.min() >= 0 else None
    if index.num_samples != len(labels) or not np.array_equal(got, labels) or counts != meta["label_counts"]:
        raise ConversionError(f"{out_dir}: read back {index.num_samples} samples with label histogram {counts}, "
                              f"expected {len(labels)} and {meta['label_counts']} in input order")
    check_against_mosaic(out_dir, index, store, MOMENTS_KEY)
    check_hashes(store)


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class EncodeReport:
    out_dir: Path
    meta: dict  # diffscale.json ({} while parts are missing)
    parts_encoded: list[int] = field(default_factory=list)  # by this rank in this run
    complete: bool = False


def _prepare_output(out_dir: Path, manifest: dict, overwrite: bool) -> list[int]:
    """Rank 0: make `out_dir` ready (new, replaced, or an unfinished encode of the same arguments) and return
    the parts still to encode."""
    file = out_dir / MANIFEST_FILE
    if out_dir.exists() and any(out_dir.iterdir()):
        old = json.loads(file.read_text()) if file.is_file() else None
        if overwrite:
            if old is None and not (out_dir / INDEX_FILE).is_file():
                raise ConversionError(f"--output {out_dir}: refusing to delete a folder that is not an MDS dataset")
            shutil.rmtree(out_dir)
        elif old is None or old.get("complete"):
            raise ConversionError(f"--output {out_dir} is not empty; pass --overwrite to replace it")
        else:
            changed = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in manifest.items() if old.get(k) != v]
            if changed:
                raise ConversionError(f"--output {out_dir}: holds an unfinished encode with other arguments "
                                      f"({'; '.join(changed)}); rerun with the same ones to resume, or --overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not file.is_file():
        file.write_text(json.dumps({**manifest, "complete": False}, indent=1) + "\n")
    for stale in out_dir.glob(".part_*.tmp"):  # left by a killed run
        shutil.rmtree(stale)
    return [k for k in range(manifest["num_parts"]) if not (out_dir / part_name(k) / INDEX_FILE).is_file()]


def _check_arguments(resolution: int, dtype: str, batch: int, shard_samples: int | None, vae_path: str | None,
                     random_vae: bool) -> str | None:
    """One-line errors naming the argument; returns the resolved VAE directory (None with random_vae)."""
    from diffscale.models.sd_vae import check_vae_directory

    if resolution <= 0 or resolution % DOWNSAMPLE:
        raise ConversionError(f"--resolution {resolution}: expected a positive multiple of {DOWNSAMPLE} (the VAE "
                              f"downsamples by {DOWNSAMPLE})")
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    if batch < 1 or (shard_samples is not None and shard_samples < 1):
        raise ConversionError(f"--batch {batch} / --shard-samples {shard_samples}: expected positive integers")
    if random_vae:
        return None
    if vae_path is None:
        raise ConversionError("--vae: give the local sd-vae-ft-ema directory (or --random-vae for tests)")
    return str(check_vae_directory(vae_path).resolve())  # a ConfigError saying where to download it


def _plan(out_dir: Path, manifest: dict, overwrite: bool) -> list[int]:
    """The parts still to encode, decided by rank 0 (which prepares the output) and told to every rank; an error
    there is raised on every rank alike."""
    plan: tuple[str, object] = ("", None)
    if dist.get_rank() == 0:
        try:
            plan = ("ok", _prepare_output(out_dir, manifest, overwrite))
        except ConversionError as exc:
            plan = ("error", str(exc))
    status, pending = dist.broadcast_object(plan)
    if status == "error":
        raise ConversionError(pending)
    return pending


def encode_latents(source: str, input_path: Path, out_dir: Path, *, resolution: int = 256,
                   vae_path: str | None = None, random_vae: bool = False, seed: int = 0, batch: int = 64,
                   dtype: str = "float16", shard_samples: int | None = None, device: str | torch.device | None = None,
                   workers: int = 1, overwrite: bool = False, progress: bool = True, max_parts: int | None = None,
                   vae: torch.nn.Module | None = None) -> EncodeReport:
    """Encode `input_path` into latents at `out_dir`: this rank's share of the parts still missing, then (rank 0)
    merge and check. Collective under torchrun. `max_parts`: stop after that many parts on this rank, unmerged (a
    kill, for tests); `vae`: an SDVAE already built as vae_path / random_vae / seed say (tests, benchmarks)."""
    from diffscale.models.sd_vae import SDVAE

    vae_path = _check_arguments(resolution, dtype, batch, shard_samples, vae_path, random_vae)
    input_path, out_dir = Path(input_path).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    inp = open_input(source, input_path, resolution)
    device = torch.device(device if device is not None else "cpu")
    latent = resolution // DOWNSAMPLE
    record_bytes = 2 * 2 * LATENT_CHANNELS * latent * latent * np.dtype(dtype).itemsize + 8
    shard_samples = shard_samples or max(1, SHARD_BYTES // record_bytes)
    manifest = {"source": source, "input": str(input_path), "resolution": resolution,
                "vae": f"random (seed {seed})" if random_vae else vae_path, "batch": batch, "dtype": dtype,
                "shard_samples": shard_samples, "precision": "bf16" if device.type == "cuda" else "fp32",
                "num_samples": len(inp), "num_parts": -(-len(inp) // shard_samples)}
    pending = _plan(out_dir, manifest, overwrite)
    if vae is None:
        vae = SDVAE(vae_path, random_init=random_vae, parts="encoder", seed=seed)
    vae = vae.to(device).eval()
    mine = pending[dist.get_rank()::dist.get_world_size()][:max_parts]
    try:
        _encode_parts(vae, inp, out_dir, mine, shard_samples, batch, dtype, device, workers, progress)
    except ConversionError as exc:
        exc.rank_local = True  # the tool prints errors of one rank's share from that rank
        raise
    dist.barrier()
    report = EncodeReport(out_dir, {}, list(mine))
    if dist.get_rank() == 0 and all((out_dir / part_name(k) / INDEX_FILE).is_file()
                                    for k in range(manifest["num_parts"])):
        report.meta = _finish(out_dir, inp, manifest, vae)
    report.complete = bool(dist.broadcast_object(bool(report.meta)))
    return report


def _encode_parts(vae: torch.nn.Module, inp: ImageInput, out_dir: Path, parts: list[int], shard_samples: int,
                  batch: int, dtype: str, device: torch.device, workers: int, progress: bool) -> None:
    """Encode and write `parts` (this rank's), batch by batch from each part's first sample."""
    n = len(inp)
    total = sum(min(n, (k + 1) * shard_samples) - k * shard_samples for k in parts)
    bar = tqdm(total=total, unit="img", desc=f"encoding (rank 0 of {dist.get_world_size()})",
               disable=not progress or dist.get_rank() != 0)
    pool = Pool(workers) if workers > 1 and inp.files is not None else None
    try:
        for k in parts:
            lo, hi = k * shard_samples, min(n, (k + 1) * shard_samples)
            images = prefetch(inp.images(np.arange(s, min(s + batch, hi)), pool) for s in range(lo, hi, batch))
            write_part(out_dir / part_name(k), _checked(encode_batches(vae, images, device), dtype, lo, bar),
                       inp.labels[lo:hi], dtype)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()


def _checked(batches: Iterator[np.ndarray], dtype: str, first: int, bar: tqdm) -> Iterator[np.ndarray]:
    """Batches cast to the stored dtype; non-finite values (an fp16 overflow, a diverged VAE) stop the run."""
    for batch in batches:
        out = batch.astype(dtype)
        if not np.isfinite(out).all():
            raise ConversionError(f"samples {first}..{first + len(out) - 1}: non-finite moments in {dtype}")
        first += len(out)
        bar.update(len(out))
        yield out


def _finish(out_dir: Path, inp: ImageInput, manifest: dict, vae: torch.nn.Module) -> dict:
    """Rank 0, every part present: merged index, diffscale.json, read-back check; marks the encode complete."""
    merge_parts(out_dir, manifest["num_parts"])
    latent = inp.resolution // DOWNSAMPLE
    meta = {
        "format_version": 1, "kind": "latents", "source": inp.source, "input": str(inp.path),
        "num_samples": len(inp), "shape": [2, 2 * LATENT_CHANNELS, latent, latent], "dtype": manifest["dtype"],
        "latent_shape": [LATENT_CHANNELS, latent, latent], "resolution": inp.resolution,
        "channels": LATENT_CHANNELS, "scaling_factor": float(vae.scaling_factor), "vae": manifest["vae"],
        "class_ids": inp.class_ids, "class_names": inp.class_names,
        "label_counts": np.bincount(inp.labels, minlength=len(inp.class_ids)).tolist(), "unreadable": [],
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    verify_latents(out_dir, meta, inp.labels)
    (out_dir / MANIFEST_FILE).write_text(json.dumps({**manifest, "complete": True}, indent=1) + "\n")
    return meta
