"""Discrete-time Gaussian diffusion (Ho et al. 2020, "DDPM"; Nichol & Dhariwal 2021, "Improved DDPM").

Forward process over T steps t = 0..T-1: q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I), ab_t = prod_{s<=t}(1 - beta_s).
The network predicts eps (default), x_0 or v = sqrt(ab) eps - sqrt(1 - ab) x_0, and optionally the variance of
p(x_{t-1} | x_t) through extra channels v in [-1, 1] (`learned_range`):
log Sigma = frac log beta_t + (1 - frac) log beta_tilde_t, frac = (v + 1) / 2, beta_tilde the posterior variance.

Losses: `simple` is the MSE of the prediction. The variational term L_vb is, per example, the KL of the true
posterior q(x_{t-1} | x_t, x_0) to p (t > 0) or the discretised decoder NLL of x_0 (t = 0), averaged over the
example's elements, with the model's mean detached so that L_vb trains only the variance. Two hybrids:
- `hybrid` (improved DDPM's code): MSE + L_vb in bits x T / 1000 (its "rescaled" vb: lambda = 0.001 per step
  of a 1000-step process, expressed in bits);
- `hybrid_seed` (the DDPM seed's recipe): MSE + 0.001 L_vb in nats.
For T = 1000 the two weigh vb by 1/ln 2 = 1.44 against 0.001: the seed's is 1443x weaker on vb.

Function names and tensor conventions follow openai/improved-diffusion (gaussian_diffusion.py) so numbers can be
checked against it: `get_named_beta_schedule`, `GaussianDiffusion.q_sample`, `q_posterior_mean_variance`,
`p_mean_variance`, `training_losses`, `normal_kl`, `discretized_gaussian_log_likelihood` (its tanh approximation
of the normal CDF, on [-1, 1] images of 256 levels).
"""

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from diffscale.diffusion.base import Cond, LossOutput, Objective, Phase
from diffscale.diffusion.resample import LossSecondMomentResampler
from diffscale.errors import ConfigError
from diffscale.registry import OBJECTIVES

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned_range")
LOSSES = ("simple", "hybrid", "hybrid_seed")
SEED_LAMBDA = 0.001  # the seed's weight of L_vb (in nats) in `hybrid_seed`


def _check(key: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def get_named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """betas [T] float64. `linear`: DDPM's 1e-4..0.02 for T = 1000, scaled by 1000 / T so that any T spans the
    same total noise; `cosine`: beta_t = min(1 - ab(t + 1) / ab(t), 0.999), ab(s) = cos^2((s / T + 0.008) / 1.008
    * pi / 2) (improved DDPM eq. 17; the clip avoids the singularity at s = T)."""
    _check("schedule", name, SCHEDULES)
    if not isinstance(num_timesteps, int) or num_timesteps < 2:
        raise ConfigError(f"num_timesteps: expected an integer >= 2, got {num_timesteps!r}")
    if name == "linear":
        if num_timesteps < 20:
            raise ConfigError(f"num_timesteps: the linear schedule needs T >= 20 (its last beta is 0.02 x 1000 / T "
                              f"<= 1), got {num_timesteps}; use schedule='cosine' for fewer steps")
        scale = 1000 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    s = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    alpha_bar = np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF that improved DDPM's likelihoods use."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log P(x) elementwise (nats) of data x in [-1, 1] quantised to 256 levels (bins of width 2/255) under
    N(means, e^(2 log_scales)); the outermost bins extend to -inf / +inf (DDPM's decoder, Ho et al. eq. 13)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dim but the batch: [B, ...] -> [B]."""
    return x.flatten(1).mean(1)


class MeanVariance(NamedTuple):
    mean: torch.Tensor  # [B, C, ...] of p(x_{t-1} | x_t)
    variance: torch.Tensor  # [B, C, ...] (broadcast to the input's shape)
    log_variance: torch.Tensor  # [B, C, ...]
    pred_xstart: torch.Tensor  # [B, C, ...]: the model's x_0 (clipped to [-1, 1] if asked)
    eps: torch.Tensor  # [B, C, ...]: the noise that pred_xstart implies


class GaussianDiffusion:
    """The process of `betas` [T] (float64 numpy) and how the network's output is read.

    Every per-step coefficient is precomputed in float64 and gathered at t in float32 on the input's device.
    `rescale_timesteps`: the network sees t * 1000 / T (improved DDPM's option), so one network embedding suits
    every T.
    """

    def __init__(self, betas: np.ndarray, prediction: str = "eps", variance: str = "learned_range",
                 loss: str = "hybrid", rescale_timesteps: bool = False):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ConfigError("betas: expected a 1-D array with 0 < beta <= 1")
        self.prediction = _check("prediction", prediction, PREDICTIONS)
        self.variance = _check("variance", variance, VARIANCES)
        self.loss_type = _check("loss", loss, LOSSES)
        if self.loss_type != "simple" and self.variance != "learned_range":
            raise ConfigError(f"loss={loss!r} trains the variance: it needs variance='learned_range' "
                              f"(got {variance!r}); use loss='simple' with a fixed variance")
        self.rescale_timesteps = rescale_timesteps
        self.num_timesteps = len(betas)
        self.betas = betas
        alphas = 1.0 - betas
        ab = np.cumprod(alphas)
        ab_prev = np.append(1.0, ab[:-1])
        self.alphas_cumprod, self.alphas_cumprod_prev = ab, ab_prev
        self.posterior_variance = betas * (1.0 - ab_prev) / (1.0 - ab)
        # beta_tilde_0 = 0: log-clip it to beta_tilde_1 (the decoder's variance at t = 0 is then finite).
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self._table = {
            "sqrt_ab": np.sqrt(ab), "sqrt_1m_ab": np.sqrt(1.0 - ab), "sqrt_recip_ab": np.sqrt(1.0 / ab),
            "sqrt_recipm1_ab": np.sqrt(1.0 / ab - 1.0), "ab": ab, "ab_prev": ab_prev,
            "posterior_variance": self.posterior_variance,
            "posterior_log_variance_clipped": self.posterior_log_variance_clipped,
            "coef1": betas * np.sqrt(ab_prev) / (1.0 - ab), "coef2": (1.0 - ab_prev) * np.sqrt(alphas) / (1.0 - ab),
            "log_betas": np.log(betas),
            # fixed_large: Sigma = beta_t, except beta_tilde_1 at t = 0 (a better decoder variance; DDPM's choice).
            "large_variance": np.append(self.posterior_variance[1], betas[1:]),
        }
        self._device_tables: dict[tuple, dict[str, torch.Tensor]] = {}

    # ----------------------------------------------------------------------------------------------- helpers
    def at(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Coefficient `name` at timesteps t [B], shaped [B, 1, ...] to broadcast over `like`, in float64 if
        `like` is float64 (exactness checks), else float32."""
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        tables = self._device_tables.get((t.device, dtype))
        if tables is None:
            tables = {k: torch.from_numpy(v).to(t.device, dtype) for k, v in self._table.items()}
            self._device_tables[(t.device, dtype)] = tables
        return tables[name][t.long()].reshape(-1, *([1] * (like.ndim - 1)))

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the network is given for timesteps t [B]: float t, times 1000 / T if rescale_timesteps."""
        return t.float() * (1000.0 / self.num_timesteps) if self.rescale_timesteps else t.float()

    def space(self, timesteps: list[int] | np.ndarray) -> tuple["GaussianDiffusion", torch.Tensor]:
        """The process restricted to an increasing subset of timesteps (improved DDPM's respacing): betas
        1 - ab[tau_i] / ab[tau_{i-1}] keep ab at every kept step. Returns it and tau [S] (int64), which maps its
        step i to the original timestep the network is given."""
        tau = np.asarray(sorted({int(s) for s in timesteps}), dtype=np.int64)
        if len(tau) < 2 or tau[0] < 0 or tau[-1] >= self.num_timesteps:
            raise ConfigError(f"timesteps: expected at least 2 of 0..{self.num_timesteps - 1}, got {list(timesteps)}")
        ab = self.alphas_cumprod[tau]
        spaced = GaussianDiffusion(1.0 - ab / np.append(1.0, ab[:-1]), self.prediction, self.variance, self.loss_type,
                                   self.rescale_timesteps)
        return spaced, torch.from_numpy(tau)

    # ----------------------------------------------------------------------------------------------- process
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) noise."""
        return self.at("sqrt_ab", t, x_start) * x_start + self.at("sqrt_1m_ab", t, x_start) * noise

    def q_mean_variance(self, x_start: torch.Tensor,
                        t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log variance of q(x_t | x_0)."""
        var = (1.0 - self.at("ab", t, x_start)).expand_as(x_start)
        return self.at("sqrt_ab", t, x_start) * x_start, var, var.log()

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor,
                                  t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0) (DDPM eq. 6-7)."""
        mean = self.at("coef1", t, x_start) * x_start + self.at("coef2", t, x_start) * x_t
        var = self.at("posterior_variance", t, x_start).expand_as(x_t)
        return mean, var, self.at("posterior_log_variance_clipped", t, x_start).expand_as(x_t)

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self.at("sqrt_recip_ab", t, x_t) * x_t - self.at("sqrt_recipm1_ab", t, x_t) * eps

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        return (self.at("sqrt_recip_ab", t, x_t) * x_t - pred_xstart) / self.at("sqrt_recipm1_ab", t, x_t)

    def split_output(self, model_output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prediction [B, C, ...], variance values [B, C, ...] or None) of the network's output."""
        expected = 2 * channels if self.variance == "learned_range" else channels
        if model_output.shape[1] != expected:
            raise ValueError(f"model output has {model_output.shape[1]} channels; variance={self.variance!r} with "
                             f"{channels}-channel data expects {expected}")
        if self.variance == "learned_range":
            return model_output[:, :channels], model_output[:, channels:]
        return model_output, None

    def p_mean_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        clip_denoised: bool = False) -> MeanVariance:
        """p(x_{t-1} | x_t) from the network's output at (x_t, t): its mean, variance and x_0 prediction."""
        dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
        pred, var_values = self.split_output(model_output.to(dtype), x_t.shape[1])
        if self.variance == "learned_range":
            min_log = self.at("posterior_log_variance_clipped", t, x_t)
            max_log = self.at("log_betas", t, x_t)
            frac = (var_values + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
        elif self.variance == "fixed_large":
            log_variance = self.at("large_variance", t, x_t).log().expand_as(x_t)
        else:
            log_variance = self.at("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        if self.prediction == "eps":
            pred_xstart = self.predict_xstart_from_eps(x_t, t, pred)
        elif self.prediction == "x0":
            pred_xstart = pred
        else:  # v = sqrt(ab) eps - sqrt(1 - ab) x_0  =>  x_0 = sqrt(ab) x_t - sqrt(1 - ab) v
            pred_xstart = self.at("sqrt_ab", t, x_t) * x_t - self.at("sqrt_1m_ab", t, x_t) * pred
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        eps = pred if self.prediction == "eps" and not clip_denoised else \
            self.predict_eps_from_xstart(x_t, t, pred_xstart)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return MeanVariance(mean, log_variance.exp(), log_variance, pred_xstart, eps)

    # ----------------------------------------------------------------------------------------------- losses
    def target(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network's prediction channels regress to."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x_start
        return self.at("sqrt_ab", t, x_start) * noise - self.at("sqrt_1m_ab", t, x_start) * x_start

    def vb_terms_bpd(self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                     clip_denoised: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_vb [B] in bits per element, the model's x_0 prediction): KL(q(x_{t-1}|x_t,x_0) || p) for t > 0,
        the decoder NLL -log p(x_0 | x_1) at t = 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out.mean, out.log_variance)) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x_start, out.mean, 0.5 * out.log_variance)) / math.log(2.0)
        return torch.where(t == 0, nll, kl), out.pred_xstart

    def training_losses(self, model_fn, x_start: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example terms {'loss', 'mse', 'vb'} [B] float32 at explicit timesteps t [B] and noise [B, ...].
        model_fn(x_t, model_time(t)) returns the network's output (C or 2C channels). `vb` is the weighted
        term as it enters `loss` (zero for `simple`)."""
        x_start, noise = x_start.float(), noise.float()
        x_t = self.q_sample(x_start, t, noise)
        out = model_fn(x_t, self.model_time(t)).float()
        pred, var_values = self.split_output(out, x_start.shape[1])
        mse = mean_flat((self.target(x_start, t, noise) - pred) ** 2)
        if self.loss_type == "simple":
            return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}
        # The mean is detached: L_vb trains the variance only, the MSE trains the mean (improved DDPM Sec. 3.1).
        vb_bits, _ = self.vb_terms_bpd(torch.cat([pred.detach(), var_values], dim=1), x_start, x_t, t)
        if self.loss_type == "hybrid":
            vb = vb_bits * (self.num_timesteps / 1000.0)
        else:
            vb = vb_bits * (math.log(2.0) * SEED_LAMBDA)  # back to nats, times the seed's lambda
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    def prior_bpd(self, x_start: torch.Tensor) -> torch.Tensor:
        """KL(q(x_{T-1} | x_0) || N(0, I)) [B] in bits per element: the bound's prior term."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device, dtype=torch.long)
        mean, _, log_var = self.q_mean_variance(x_start.float(), t)
        return mean_flat(normal_kl(mean, log_var, torch.zeros_like(mean), torch.zeros_like(mean))) / math.log(2.0)


def build_diffusion(schedule: str = "cosine", num_timesteps: int = 1000, prediction: str = "eps",
                    variance: str = "learned_range", loss: str = "hybrid",
                    rescale_timesteps: bool = True) -> GaussianDiffusion:
    """The process that DDPMLoss, the DDPM samplers and the NLL evaluator share (same keyword arguments)."""
    return GaussianDiffusion(get_named_beta_schedule(schedule, num_timesteps), prediction=prediction,
                             variance=variance, loss=loss, rescale_timesteps=rescale_timesteps)


def drop_labels(labels: torch.Tensor | None, drop: torch.Tensor | None) -> torch.Tensor | None:
    """Classifier-free guidance's label dropout: class -1 (the null class of DDPM networks) where `drop`."""
    if labels is None or drop is None:
        return labels
    return torch.where(drop, torch.full_like(labels, -1), labels)


@OBJECTIVES.register_module()
class DDPMLoss(Objective):
    """The DDPM / improved-DDPM loss of the one part `model` (a network forward(x_t, t, labels) -> C or 2C
    channels; label -1 is the null class). The condition is (t [B], unit noise [B, ...], importance weight [B],
    label-drop flags [B]).

    `importance_sampling`: t is drawn from improved DDPM's loss-second-moment resampler (diffusion/resample.py)
    and each loss weighted by 1 / (T p_t), so the expected loss stays the uniform-t loss; its history is this
    objective's state (saved in every checkpoint). `p_uncond`: the probability that an example's label is
    replaced by the null class (classifier-free guidance training).
    """

    def __init__(self, schedule: str = "cosine", num_timesteps: int = 1000, prediction: str = "eps",
                 variance: str = "learned_range", loss: str = "hybrid", rescale_timesteps: bool = True,
                 p_uncond: float = 0.0, importance_sampling: bool = False, history_per_term: int = 10,
                 uniform_prob: float = 0.001):
        if not 0.0 <= p_uncond < 1.0:
            raise ConfigError(f"objective.p_uncond: expected a probability in [0, 1), got {p_uncond!r}")
        self.diffusion = build_diffusion(schedule, num_timesteps, prediction, variance, loss, rescale_timesteps)
        self.p_uncond = float(p_uncond)
        self.resampler = LossSecondMomentResampler(num_timesteps, history_per_term, uniform_prob) \
            if importance_sampling else None
        self._seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (t, unweighted loss) of this step's micro-batches

    def sample_condition(self, x: torch.Tensor, generator: torch.Generator) -> Cond:
        B = x.shape[0]
        if self.resampler is not None:
            t, weight = self.resampler.sample(B, x.device, generator)
        else:
            t = torch.randint(0, self.diffusion.num_timesteps, (B,), device=x.device, generator=generator)
            weight = torch.ones(B, device=x.device)
        noise = torch.randn(x.shape, device=x.device, generator=generator)
        drop = torch.rand(B, device=x.device, generator=generator) < self.p_uncond
        return {"t": t, "noise": noise, "weight": weight, "drop": drop}

    def terms(self, model: nn.Module, batch: dict, cond: Cond) -> dict[str, torch.Tensor]:
        """training_losses of `model` on `batch` at `cond` (labels dropped where cond['drop'])."""
        labels = drop_labels(batch.get("label"), cond.get("drop"))
        return self.diffusion.training_losses(lambda x_t, t_in: model(x_t, t_in, labels), batch["x"], cond["t"],
                                              cond["noise"])

    def per_example(self, model: nn.Module, batch: dict, cond: Cond) -> torch.Tensor:
        """The importance-weighted loss [B] (weight 1 under uniform t)."""
        return self.terms(model, batch, cond)["loss"] * cond["weight"]

    def __call__(self, phase: Phase, models, batch: dict, generator: torch.Generator) -> LossOutput:
        cond = batch.get("cond")
        if cond is None:
            cond = self.sample_condition(batch["x"], generator)
        terms = self.terms(models[self.score_part], batch, cond)
        if self.resampler is not None:
            self._seen.append((cond["t"], terms["loss"].detach()))
        return LossOutput(terms["loss"] * cond["weight"], self.logs(terms))

    def logs(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What a training phase logs of `terms` (scalar tensors)."""
        return {"mse": terms["mse"].mean().detach(), "vb": terms["vb"].mean().detach()}

    def after_step(self, phase: Phase, out: LossOutput) -> None:
        """Feed this step's (t, loss) pairs of every rank to the resampler (one all-gather)."""
        if self.resampler is None or not self._seen:
            return
        t = torch.cat([s[0] for s in self._seen])
        losses = torch.cat([s[1] for s in self._seen])
        self._seen.clear()
        self.resampler.update(t, losses)

    def state_dict(self) -> dict:
        return {} if self.resampler is None else {"resampler": self.resampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.resampler is not None and "resampler" in state:
            self.resampler.load_state_dict(state["resampler"])
        elif self.resampler is not None:
            raise ConfigError("objective: importance_sampling is on but the checkpoint has no resampler history "
                              "(it was trained without it); turn importance_sampling off or start afresh")
