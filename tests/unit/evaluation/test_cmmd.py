"""CMMD's MMD against a direct double loop, and its streamed, block-wise accumulation against the one-shot value."""

import math

import numpy as np
import torch

from diffscale.evaluation.cmmd import CMMD, distributed_mmd, mmd, rbf_kernel_sum
from tests.unit.evaluation.stand_ins import FlattenFeatures, images_of


def direct_mmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """The definition, one kernel entry at a time: every pair, the diagonal included, in each mean."""
    def k(a, b):
        return math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b, strict=True)) / (2 * sigma**2))

    n, m = len(x), len(y)
    k_xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n)) / n**2
    k_yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m)) / m**2
    k_xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return scale * (k_xx + k_yy - 2 * k_xy)


def test_mmd_equals_the_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((13, 5)) * 4, rng.standard_normal((9, 5)) * 4 + 1.5
    expected = direct_mmd(x.tolist(), y.tolist())
    assert abs(mmd(x, y) - expected) < 1e-10 * abs(expected), (mmd(x, y), expected)
    assert abs(mmd(x, y, sigma=2.0, scale=1.0) - direct_mmd(x.tolist(), y.tolist(), 2.0, 1.0)) < 1e-12
    assert mmd(x, x) == 0.0


def test_unit_norm_embeddings_like_clip():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 16))
    y = rng.standard_normal((15, 16)) + 0.3
    x, y = x / np.linalg.norm(x, axis=1, keepdims=True), y / np.linalg.norm(y, axis=1, keepdims=True)
    assert abs(mmd(x, y) - direct_mmd(x.tolist(), y.tolist())) < 1e-9


def test_block_sums_do_not_depend_on_the_block_size():
    a, b = torch.randn(37, 6, dtype=torch.float64), torch.randn(11, 6, dtype=torch.float64)
    one = rbf_kernel_sum(a, b, 3.0, block_rows=1000)
    assert torch.allclose(rbf_kernel_sum(a, b, 3.0, block_rows=5), one, rtol=1e-14)
    assert abs(distributed_mmd(a, b, 3.0, 1.0) - mmd(a, b, 3.0, 1.0)) < 1e-14  # one process: the same sums


def test_streamed_evaluator_equals_one_shot():
    gen = torch.Generator().manual_seed(0)
    ref_images, images = images_of(11, gen), images_of(17, gen)
    ref_evaluator = CMMD(random_weights=True)
    ref_evaluator._net = FlattenFeatures()
    ref_evaluator.begin()
    ref_evaluator.update(ref_images)
    ref = {f"cmmd_{k}": v for k, v in ref_evaluator.reference().items()}

    evaluator = CMMD(random_weights=True)
    evaluator._net = FlattenFeatures()
    evaluator.begin()
    for part in images.split([1, 7, 9]):
        evaluator.update(part)
    got = evaluator.compute(ref)["cmmd"]
    flat = FlattenFeatures()
    assert abs(got - mmd(flat(images), flat(ref_images))) < 1e-9
    assert got > 0
