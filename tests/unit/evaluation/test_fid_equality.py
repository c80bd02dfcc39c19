"""Our FID, FD-DINOv2 and CMMD against independent computations through the same networks: FID against
torch-fidelity's own `calculate_metrics` on the same two image folders and the same weight file (the untrained,
He-initialised Inception saved in torch-fidelity's format: no download), FD-DINOv2 against scipy's sqrtm of the
network's features, CMMD against the MMD formula written out. The untrained networks give features of usable
scale, so the distances between different image sets are far from 0 and a wrong distance shows."""

import ctypes
import glob
import importlib.util
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from diffscale.evaluation.cmmd import CMMD
from diffscale.evaluation.fd_dinov2 import FDDINOv2
from diffscale.evaluation.image_sources import open_source
from diffscale.evaluation.networks import build_inception
from diffscale.evaluation.pipeline import build_evaluators, format_table, run_evaluation
from tests.helpers import ROOT

REL = 1e-5  # the agreement asked of every metric with its independent computation


@contextmanager
def one_blas_thread():
    """numpy's OpenBLAS at one thread for the block: on a busy 2-core machine its two threads fight, and
    torch-fidelity's 2048 x 2048 np.linalg.eigvals takes ~6x longer than on one. Speed only: where the library or
    its symbols are not found, nothing changes."""
    libs = glob.glob(str(Path(np.__file__).parent.parent / "numpy.libs" / "libscipy_openblas*.so"))
    lib = ctypes.CDLL(libs[0]) if libs else None
    get_threads = getattr(lib, "scipy_openblas_get_num_threads64_", None)
    set_threads = getattr(lib, "scipy_openblas_set_num_threads64_", None)
    if get_threads is None or set_threads is None:
        yield
        return
    before = get_threads()
    set_threads(1)
    try:
        yield
    finally:
        set_threads(before)


def load_tool(name: str):
    """tools/<name>.py as a module, run in this process (its imports are this process's)."""
    spec = importlib.util.spec_from_file_location(f"diffscale_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ramps(n: int, low: float, high: float, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """n uint8 images [n, size, size, 3]: a horizontal ramp from `low` to `high`, tinted, plus noise."""
    ramp = np.linspace(low, high, size)[None, None, :, None] * rng.uniform(0.5, 1, (n, 1, 1, 3))
    return (ramp + rng.integers(0, 40, (n, size, size, 3))).clip(0, 255).astype(np.uint8)


def write_folder(path: Path, images: np.ndarray) -> Path:
    path.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(path / f"{i:03d}.png")
    return path


def relative_gap(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.fixture
def inception_case(tmp_path):
    """A weight file in torch-fidelity's format (the untrained Inception's state dict) and two folders of
    differently distributed images, few of them: an Inception forward costs ~0.5 s per image here."""
    weights = tmp_path / "inception-random.pth"
    torch.save(build_inception(None).net.state_dict(), weights)
    rng = np.random.default_rng(0)
    ref = write_folder(tmp_path / "ref", ramps(4, 0, 255, rng))
    gen = write_folder(tmp_path / "gen", ramps(3, 60, 200, rng))
    return weights, ref, gen


def test_fid_equals_torch_fidelity(inception_case, tmp_path, one_thread):
    """Reference statistics by tools/compute_ref_stats.py, the evaluation by the pipeline tools/test.py runs,
    against torch_fidelity.calculate_metrics on the same folders with the same weight file."""
    import torch_fidelity

    weights, ref_dir, gen_dir = inception_case
    evaluators = [dict(type="FID", weights=str(weights))]
    (tmp_path / "eval.py").write_text(f"evaluators = {evaluators!r}\n")
    code = load_tool("compute_ref_stats").main(["--data", str(ref_dir), "--out", str(tmp_path / "ref.npz"),
                                                "--config", str(tmp_path / "eval.py"), "--batch", "64"])
    assert code == 0
    with np.load(tmp_path / "ref.npz") as f:
        ref = {k: f[k] for k in f.files}
    assert 0.01 < np.abs(ref["fid_mu"]).mean() < 10  # usable scale (PyTorch's default draw: ~1e-8)

    fid = build_evaluators(evaluators, torch.device("cpu"))
    result = run_evaluation(fid, open_source(gen_dir).batches(64), ref)
    ours = result["metrics"]["fid"]
    own = {f"fid_{k}": v for k, v in fid[0].reference().items()}  # the evaluated images' own statistics
    same = fid[0].compute(own)["fid"]
    with one_blas_thread():
        theirs = torch_fidelity.calculate_metrics(
            input1=str(gen_dir), input2=str(ref_dir), fid=True, feature_extractor_weights_path=str(weights),
            cuda=False, cache=False, verbose=False, batch_size=64, save_cpu_ram=True)["frechet_inception_distance"]
    print(f"FID ours {ours!r} torch-fidelity {theirs!r} relative gap {relative_gap(ours, theirs):.3g}; "
          f"identical sets {same!r}")
    assert ours > 1 and relative_gap(ours, theirs) < REL, (ours, theirs)
    assert abs(same) < 1e-6 * ours  # identical sets
    assert not result["comparable"]["fid"]
    assert f"NO: not the official weights (SHA-256 differs) ({weights.name} sha256:" in format_table(result)


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The Frechet distance of the reference implementations: moments by numpy, the matrix square root by scipy."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float((mu_a - mu_b) @ (mu_a - mu_b) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def direct_cmmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """CMMD's biased MMD^2 from pairwise differences (not the |a|^2 + |b|^2 - 2ab expansion cmmd.py uses):
    exp(-|a - b|^2 / (2 sigma^2)) averaged over all pairs of each kind, the diagonal included."""
    def mean_kernel(a, b):
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * sigma**2)).mean()

    return scale * (mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y))


def evaluate(evaluator, ref_images: torch.Tensor, images: torch.Tensor, batch: int) -> float:
    """Reference statistics of `ref_images`, then the metric of `images`, both fed in batches."""
    evaluator.begin()
    for part in ref_images.split(batch):
        evaluator.update(part)
    ref = {f"{evaluator.name}_{k}": v for k, v in evaluator.reference().items()}
    evaluator.begin()
    for part in images.split(batch):
        evaluator.update(part)
    return evaluator.compute(ref)[evaluator.name]


def image_sets(n_ref: int, n_gen: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(1)
    ref, gen = ramps(n_ref, 0, 255, rng, size), ramps(n_gen, 60, 200, rng, size)
    return tuple(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous() for x in (ref, gen))


@torch.no_grad()
def test_fd_dinov2_equals_scipy_sqrtm_on_the_networks_features(one_thread):
    """More images than feature dimensions (test_vit: 64), so both covariances have full rank and scipy's sqrtm,
    the reference route, is well conditioned."""
    ref_images, images = image_sets(80, 72, 16)
    evaluator = FDDINOv2(random_weights=True, arch="test_vit")
    ours = evaluate(evaluator, ref_images, images, batch=40)
    feats = [evaluator.network(x).double().numpy() for x in (ref_images, images)]
    direct = scipy_frechet(feats[1], feats[0])
    same = evaluate(evaluator, ref_images, ref_images, batch=40)
    print(f"FD-DINOv2 ours {ours!r} scipy {direct!r} relative gap {relative_gap(ours, direct):.3g}; "
          f"identical sets {same!r}")
    assert ours > 1e-2 and relative_gap(ours, direct) < REL, (ours, direct)
    assert abs(same) < 1e-6 * ours


@torch.no_grad()
def test_cmmd_equals_the_mmd_formula_on_the_networks_embeddings(one_thread):
    ref_images, images = image_sets(10, 8, 16)
    evaluator = CMMD(random_weights=True, arch="ViT-S-32")
    ours = evaluate(evaluator, ref_images, images, batch=4)
    embeddings = [evaluator.network(x).double().numpy() for x in (ref_images, images)]
    direct = direct_cmmd(embeddings[1], embeddings[0])
    print(f"CMMD ours {ours!r} direct {direct!r} relative gap {relative_gap(ours, direct):.3g}")
    assert ours > 1e-3 and relative_gap(ours, direct) < REL, (ours, direct)
    assert evaluate(evaluator, images, images, batch=4) == pytest.approx(0, abs=1e-9)

