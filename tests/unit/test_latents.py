"""SD-VAE latents: diffscale/data/latents.py (what tools/encode_latents.py writes, resume, errors) and
MDSImageStream(latents=True) (posterior samples, stored mirrors as flips, exact resume, errors)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffscale import registry as R
from diffscale.data.converters import ConversionError, center_crop_resize, decode_image
from diffscale.data.latents import encode_latents, merge_parts, part_name, write_part
from diffscale.data.mds import INDEX_FILE, META_FILE, MDSIndex, ShardStore
from diffscale.data.streaming import MDSImageStream, scale_images
from diffscale.errors import ConfigError
from diffscale.models.sd_vae import SDVAE
from tests.data_helpers import class_image, make_mds

RES = 32  # encoding runs the full SD-VAE on the CPU: keep the images small


# The VAE's convolutions run faster on one intra-op thread than on two fighting over a busy 2-core machine, and
# encodings compared bitwise must come from one thread count.
pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def vae():
    return SDVAE(random_init=True, seed=0, parts="encoder").eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An imagefolder of 2 classes x 3 images of different sizes and aspect ratios (so the centre crop works)."""
    root = tmp_path_factory.mktemp("imagefolder")
    for label in range(2):
        (root / f"class{label}").mkdir()
        for i in range(3):
            img = class_image(label, i, 40 + 8 * i)
            img = img.resize((img.width + 12 * i, img.height)) if i else img
            img.save(root / f"class{label}" / f"{i}.png")
    return root


def encode(folder, out, vae, **kw):
    kw = {"resolution": RES, "random_vae": True, "batch": 2, "shard_samples": 2, "progress": False, **kw}
    return encode_latents("imagefolder", folder, out, vae=vae, **kw)


@pytest.fixture(scope="module")
def encoded(folder, vae, tmp_path_factory):
    out = tmp_path_factory.mktemp("latents") / "out"
    return encode(folder, out, vae), out


def read(out) -> dict:
    index, _ = MDSIndex.open(str(out))
    return ShardStore(index).gather(np.arange(index.num_samples))


def direct_moments(vae, images: np.ndarray) -> np.ndarray:
    """[n, 2, 8, h, w] of encode_moments on the images and their mirrors, in one batch."""
    with torch.no_grad():
        x = torch.from_numpy(scale_images(images))
        mean, logvar = vae.encode_moments(torch.cat([x, x.flip(-1)]))
    return torch.cat([mean, logvar], 1).unflatten(0, (2, len(images))).transpose(0, 1).numpy()


# ---------------------------------------------------------------------------------------------- encoding
def test_imagefolder_latents_are_the_moments_of_the_crops_and_mirrors(encoded, folder, vae):
    report, out = encoded
    stored = read(out)
    files = sorted(folder.glob("*/*.png"))
    assert report.complete and report.parts_encoded == [0, 1, 2]
    assert stored["moments"].dtype == np.float16 and stored["moments"].shape == (6, 2, 8, 4, 4)
    assert stored["label"].tolist() == [0, 0, 0, 1, 1, 1]
    crops = np.stack([decode_image(str(f), RES) for f in files])  # ADM centre crop, as the converter
    expected = direct_moments(vae, crops)
    np.testing.assert_allclose(stored["moments"].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert not np.allclose(expected[:, 0], expected[:, 1], atol=1e-2)  # the mirror is encoded, not copied
    meta = json.loads((out / META_FILE).read_text())
    assert meta["kind"] == "latents" and meta["scaling_factor"] == 0.18215 and meta["resolution"] == RES
    assert meta["latent_shape"] == [4, 4, 4] and meta["label_counts"] == [3, 3] and meta["vae"] == "random (seed 0)"
    assert meta["class_names"] == ["class0", "class1"]
    basenames = [s["raw_data"]["basename"] for s in json.loads((out / INDEX_FILE).read_text())["shards"]]
    assert basenames == [f"{part_name(k)}/shard.00000.mds" for k in range(3)]


def test_mds_images_are_cropped_and_encoded_in_order(tmp_path, vae):
    src, x, labels = make_mds(tmp_path / "img", num_samples=5, shape=(3, 24, 24), num_classes=3)
    report = encode_latents("mds", src, tmp_path / "lat", resolution=16, random_vae=True, vae=vae, batch=4,
                            dtype="float32", progress=False)
    stored = read(tmp_path / "lat")
    crops = np.stack([np.asarray(center_crop_resize(Image.fromarray(i.transpose(1, 2, 0)), 16)).transpose(2, 0, 1)
                      for i in x])
    assert stored["moments"].dtype == np.float32 and stored["label"].tolist() == labels.tolist()
    np.testing.assert_allclose(stored["moments"], direct_moments(vae, crops), rtol=1e-4, atol=1e-4)
    assert report.meta["class_names"] == ["c0", "c1", "c2"] and report.meta["latent_shape"] == [4, 2, 2]


def test_a_killed_encode_resumes_without_redoing_parts(folder, vae, encoded, tmp_path):
    out = tmp_path / "out"
    first = encode(folder, out, vae, max_parts=1)  # stops after one part, as a kill would
    assert not first.complete and first.parts_encoded == [0] and not (out / INDEX_FILE).exists()
    done = (out / part_name(0) / "shard.00000.mds").stat()
    with pytest.raises(ConversionError, match=r"unfinished encode with other arguments \(batch 2 -> 3\)"):
        encode(folder, out, vae, batch=3)
    (out / ".part_00001.tmp").mkdir()  # a part a killed run left half-written
    second = encode(folder, out, vae)
    assert second.complete and second.parts_encoded == [1, 2] and not (out / ".part_00001.tmp").exists()
    again = (out / part_name(0) / "shard.00000.mds").stat()
    assert (again.st_ino, again.st_mtime_ns) == (done.st_ino, done.st_mtime_ns)  # not rewritten
    one_shot = encoded[1]
    for k in range(3):  # bitwise what the uninterrupted run wrote
        name = f"{part_name(k)}/shard.00000.mds"
        assert (out / name).read_bytes() == (one_shot / name).read_bytes()
    assert (out / INDEX_FILE).read_text() == (one_shot / INDEX_FILE).read_text()
    with pytest.raises(ConversionError, match="is not empty; pass --overwrite"):
        encode(folder, out, vae)


def test_bad_input_fails_with_one_line_naming_it(folder, vae, tmp_path, capsys):
    from tools.encode_latents import main

    with pytest.raises(ConversionError, match=r"--resolution 30: expected a positive multiple of 8"):
        encode(folder, tmp_path / "a", None, resolution=30)
    with pytest.raises(ConversionError, match=r"--input .*nowhere: not found"):
        encode(tmp_path / "nowhere", tmp_path / "a", None)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConversionError, match=r"--output .*busy is not empty; pass --overwrite"):
        encode(folder, tmp_path / "busy", None)
    with pytest.raises(ConversionError, match="refusing to delete a folder that is not an MDS dataset"):
        encode(folder, tmp_path / "busy", None, overwrite=True)
    with pytest.raises(ConfigError, match=r"SDVAE path '.*novae': no such directory.*sd-vae-ft-ema"):
        encode(folder, tmp_path / "a", None, random_vae=False, vae_path=str(tmp_path / "novae"))
    (tmp_path / "broken" / "c").mkdir(parents=True)
    (tmp_path / "broken" / "c" / "0.png").write_bytes(b"not a png")
    with pytest.raises(ConversionError, match=r"0\.png: unreadable .*remove it from --input"):
        encode(tmp_path / "broken", tmp_path / "c", vae)
    assert main(["--source", "imagefolder", "--input", str(folder), "--output", str(tmp_path / "b"),
                 "--random-vae", "--resolution", "36"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --resolution 36") and "\n" not in err


def test_latents_input_is_refused(encoded, tmp_path):
    with pytest.raises(ConversionError, match="already holds latents"):
        encode_latents("mds", encoded[1], tmp_path / "x", resolution=RES, random_vae=True)


# ---------------------------------------------------------------------------------------------- the loader
N, C, H = 4, 4, 2  # a latents dataset with chosen moments
SCALE = 0.5


@pytest.fixture(scope="module")
def chosen(tmp_path_factory):
    """Moments [N, 2, 2C, H, H] float32: mean +-(i + 1) per sample (the mirror negated, so a flip is visible),
    log-variance from -4 to 0 over the channels; diffscale.json gives scaling_factor 0.5."""
    out = tmp_path_factory.mktemp("chosen")
    mean = (np.arange(N, dtype=np.float32) + 1)[:, None, None, None] * np.ones((1, C, H, H), np.float32)
    logvar = np.broadcast_to(np.linspace(-4, 0, C, dtype=np.float32)[None, :, None, None], (N, C, H, H))
    moments = np.stack([np.concatenate([mean, logvar], 1), np.concatenate([-mean, logvar], 1)], 1)
    write_part(out / part_name(0), [moments], np.arange(N) % 2, "float32")
    merge_parts(out, 1)
    (out / META_FILE).write_text(json.dumps({"kind": "latents", "scaling_factor": SCALE, "class_names": ["a", "b"]}))
    return out, mean, logvar


def stream(path, batch_gpu=N, **cfg) -> MDSImageStream:
    cfg = dict(type="MDSImageStream", path=str(path), **{"num_workers": 0, "latents": True, **cfg})
    return R.build(R.DATASETS, cfg, "data.train", batch_gpu=batch_gpu, rank=0, world_size=1, seed=1, device="cpu")


def test_latent_batches_are_fresh_posterior_samples(chosen):
    path, mean, logvar = chosen
    s = stream(path, shuffle=False)
    assert (s.shape, s.resolution, s.num_classes, s.scaling_factor) == ((C, H, H), H, 2, SCALE)
    batches = [next(s) for _ in range(200)]  # 200 epochs of the 4 samples
    assert batches[0]["x"].dtype == torch.float32 and batches[0]["x"].shape == (N, C, H, H)
    assert batches[0]["label"].dtype == torch.int64 and batches[0]["label"].tolist() == [0, 1, 0, 1]
    assert not torch.equal(batches[0]["x"], batches[1]["x"])  # a new draw every epoch
    z = torch.stack([b["x"] for b in batches]).double()  # [200, N, C, H, H]
    eps = (z / SCALE - torch.from_numpy(mean)) / torch.from_numpy(np.exp(0.5 * logvar))
    n = eps[:, :, 0].numel()
    for c in range(C):  # per log-variance level: standard normal residuals
        assert abs(eps[:, :, c].mean()) < 4 / n ** 0.5 and abs(eps[:, :, c].std() - 1) < 0.1
    std = torch.from_numpy(np.exp(0.5 * logvar)).double()
    assert ((z.mean(0) / SCALE - torch.from_numpy(mean)).abs() < 4 * std / len(batches) ** 0.5).all()


def test_flips_take_the_stored_mirror_about_half_the_time(chosen):
    path, mean, _ = chosen
    s = stream(path, xflip=True)
    picked, expected = [], []
    for epoch in range(100):
        ids, flips = s.order.epoch(epoch)
        batch = next(s)
        sign = torch.sign(batch["x"].mean((1, 2, 3))).numpy()  # +: the image's moments, -: the mirror's
        picked.append(sign < 0)
        expected.append(flips)
        assert np.array_equal(batch["label"].numpy(), ids % 2)
    picked = np.array(picked)
    assert np.array_equal(picked, np.array(expected))  # EpochOrder's coins, per (seed, epoch)
    assert 0.35 < picked.mean() < 0.65


def test_resume_gives_the_uninterrupted_batches(chosen):
    sizes = [3, 5, 2, 7, 4]
    straight = stream(chosen[0], xflip=True, num_workers=2)
    batches, states = [], []
    for b in sizes:
        straight.batch_gpu = b
        batches.append(next(straight))
        states.append(straight.state_dict())
    straight.close()
    for k in range(1, len(sizes)):
        resumed = stream(chosen[0], batch_gpu=99, xflip=True)
        resumed.load_state_dict(states[k - 1])
        for b, expected in zip(sizes[k:], batches[k:], strict=True):
            resumed.batch_gpu = b
            got = next(resumed)
            assert torch.equal(got["x"], expected["x"]) and torch.equal(got["label"], expected["label"])


def test_the_encoded_dataset_loads_as_latents(encoded):
    s = stream(encoded[1], batch_gpu=6)
    batch = next(s)
    assert batch["x"].shape == (6, 4, 4, 4) and torch.isfinite(batch["x"]).all() and s.resolution == 4


def test_latents_and_images_are_not_mixed_up(chosen, tmp_path):
    images = make_mds(tmp_path / "img", num_samples=4)[0]
    with pytest.raises(ConfigError, match=r"data\.train\.latents=True: '.*img' has columns \['label', 'x'\], "
                                          r"not 'moments'.*encode_latents\.py"):
        stream(images)
    with pytest.raises(ConfigError, match=r"data\.train\.path: '.*chosen.*' holds SD-VAE latents .*set "
                                          r"data\.train\.latents=True"):
        stream(chosen[0], latents=False)
