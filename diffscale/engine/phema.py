"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving...", Sec. 3.2 and Appendix C.3).

A power-function EMA at step T with exponent gamma averages the training trajectory theta(tau) with the
profile p_{T,gamma}(tau) = (gamma + 1) tau^gamma / T^(gamma + 1) on (0, T]. (With our update
beta_t = (1 - 1/t)^(gamma + 1), the weight of step t's weights is exactly the integral of that profile over
(t - 1, t]; see engine/ema.py.) Averages are linear in the trajectory, so an average with any other profile is
approximated by the combination sum_i x_i theta_hat_i of saved snapshots whose profiles p_i best fit the target
profile p in L2: the normal equations A x = b with A_ij = <p_i, p_j>, b_i = <p_i, p> in closed form.
Times are in optimizer steps (a checkpoint's `step`); a constant batch makes this the same as EDM2's images.
"""

import numpy as np

from diffscale.engine.ema import std_to_gamma


def profile_inner(t_a: np.ndarray, gamma_a: np.ndarray, t_b: np.ndarray, gamma_b: np.ndarray) -> np.ndarray:
    """<p_{t_a, gamma_a}, p_{t_b, gamma_b}> = integral over (0, min(t_a, t_b)] of the product of two profiles
    = (ga + 1)(gb + 1) / (ga + gb + 1) * m^(ga + gb + 1) / (t_a^(ga + 1) t_b^(gb + 1)), m = min(t_a, t_b).
    Evaluated in logs: the powers overflow float64 for long runs and narrow profiles. Broadcasts."""
    t_a, g_a, t_b, g_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    m = np.minimum(t_a, t_b)
    log_val = (g_a + g_b + 1) * np.log(m) - (g_a + 1) * np.log(t_a) - (g_b + 1) * np.log(t_b)
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * np.exp(log_val)


def solve_coefficients(in_steps, in_stds, out_steps, out_stds) -> np.ndarray:
    """Coefficients X [n_in, n_out]: output j is sum_i X[i, j] * snapshot i (least squares on the profiles).

    in_steps, in_stds: step and relative std sigma_rel of each saved power-function average [n_in];
    out_steps, out_stds: the wanted averages [n_out] (broadcast). Each column is rescaled to sum to 1, so an
    average of a constant trajectory stays exact.
    """
    in_t, in_s = np.broadcast_arrays(np.asarray(in_steps, np.float64), np.asarray(in_stds, np.float64))
    out_t, out_s = np.broadcast_arrays(np.asarray(out_steps, np.float64), np.asarray(out_stds, np.float64))
    if np.any(in_t <= 0) or np.any(out_t <= 0):
        raise ValueError("post-hoc EMA: steps must be positive")
    in_g = np.array([std_to_gamma(s) for s in in_s.ravel()])
    out_g = np.array([std_to_gamma(s) for s in out_s.ravel()])
    in_t, out_t = in_t.ravel(), out_t.ravel()
    gram = profile_inner(in_t[:, None], in_g[:, None], in_t[None, :], in_g[None, :])
    rhs = profile_inner(in_t[:, None], in_g[:, None], out_t[None, :], out_g[None, :])
    try:
        x = np.linalg.solve(gram, rhs)
    except np.linalg.LinAlgError:  # duplicate snapshots make the Gram matrix singular: minimum-norm fit
        x = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    return x / x.sum(axis=0, keepdims=True)


def fit_error(in_steps, in_stds, out_step: float, out_std: float, coefficients: np.ndarray) -> float:
    """Relative L2 error ||sum_i x_i p_i - p|| / ||p|| of a reconstruction (how well the snapshots cover it)."""
    in_t, in_s = np.broadcast_arrays(np.asarray(in_steps, np.float64), np.asarray(in_stds, np.float64))
    in_g = np.array([std_to_gamma(s) for s in in_s.ravel()])
    in_t, g = in_t.ravel(), std_to_gamma(out_std)
    x = np.asarray(coefficients, np.float64).ravel()
    gram = profile_inner(in_t[:, None], in_g[:, None], in_t[None, :], in_g[None, :])
    cross = profile_inner(in_t, in_g, out_step, g)
    target = profile_inner(out_step, g, out_step, g)
    sq = x @ gram @ x - 2 * x @ cross + target
    return float(np.sqrt(max(sq, 0.0) / target))
