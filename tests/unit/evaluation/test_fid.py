"""The Frechet distance against closed forms, scipy's sqrtm route, and the streamed mean/covariance."""

import numpy as np
import pytest
import scipy.linalg
import torch

from diffscale.evaluation.base import GaussianStats
from diffscale.evaluation.fid import frechet_distance


def random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def closed_form(mu1, a, mu2, b) -> float:
    """FD between N(mu1, Q diag(a) Q^T) and N(mu2, Q diag(b) Q^T): commuting covariances, so
    tr(C1) + tr(C2) - 2 tr sqrt(C1 C2) = sum (sqrt(a_i) - sqrt(b_i))^2."""
    return float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())


@pytest.mark.parametrize("dim", [1, 16, 256])
def test_commuting_covariances_match_the_closed_form(dim):
    rng = np.random.default_rng(dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    a, b = rng.uniform(0.01, 5, dim), rng.uniform(0.01, 5, dim)
    expected = closed_form(mu1, a, mu2, b)
    assert abs(frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) - expected) < 1e-9 * max(1, expected)
    q = random_rotation(dim, rng)  # same eigenbasis, not diagonal
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert abs(got - expected) < 1e-9 * max(1, expected), (got, expected)


def test_scalar_case_by_hand():
    # N(0, 4) vs N(3, 1): 3^2 + (2 - 1)^2 = 10
    assert frechet_distance(np.zeros(1), np.eye(1) * 4, np.full(1, 3.0), np.eye(1)) == pytest.approx(10, abs=1e-12)


def test_non_commuting_agrees_with_scipy_sqrtm():
    rng = np.random.default_rng(0)
    dim = 64
    x, y = rng.standard_normal((dim, 2 * dim)), rng.standard_normal((dim, 2 * dim))
    c1, c2 = x @ x.T / dim, y @ y.T / dim + 0.1 * np.eye(dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real  # the route of the reference implementations
    reference = (mu1 - mu2) @ (mu1 - mu2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean)
    assert abs(frechet_distance(mu1, c1, mu2, c2) - reference) < 1e-8 * reference


@pytest.mark.parametrize("num", [500, 3000])
def test_a_set_against_itself_is_zero(num):
    """2048-d features: of 500 samples (rank 499, as in a small evaluation) and of 3000 (full rank, with some
    dimensions of tiny variance whose square roots a squared formulation would lose)."""
    rng = np.random.default_rng(1)
    feats = np.abs(rng.standard_normal((num, 2048))) * rng.uniform(0, 3, 2048)  # pool features are >= 0
    mu, cov = feats.mean(0), np.cov(feats, rowvar=False)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-6


def test_streamed_statistics_equal_numpy_in_any_batching():
    rng = np.random.default_rng(2)
    feats = rng.standard_normal((103, 8)) * 3 + 5
    stats = GaussianStats(torch.device("cpu"))
    for part in np.array_split(feats, [1, 40, 41, 90]):  # uneven batches, one of a single row
        stats.update(torch.from_numpy(part).float())
    n, mu, cov = stats.reduce(8)
    f32 = feats.astype(np.float32).astype(np.float64)  # the features arrive in float32
    assert n == 103
    np.testing.assert_allclose(mu, f32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(f32, rowvar=False), rtol=1e-10, atol=1e-12)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
