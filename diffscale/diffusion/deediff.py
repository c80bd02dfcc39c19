"""DeeDiff's uncertainty-aware losses (Tang et al. 2023) on top of the DDPM objective, for a DeeDiffUViT
(models/deediff.py) whose forward(x_t, t, labels, return_exits=True) gives the final output, every exit's output
g_i [depth, B, ...] and every probe's uncertainty u_i [depth, B].

Per example, with the DDPM target y (the noise for eps prediction):
  L_simple = mean (final - y)^2                       (DDPMLoss's L_simple: the backbone's own output)
  L_n,i    = mean (g_i - y)^2                         (each exit's error)
  u_hat_i  = mean tanh(|g_i - y|)                      (the uncertainty the probe should predict, in [0, 1))
  L_u      = sum_i (u_i - u_hat_i)^2
  L_UAL    = sum_i (1 - w_i) L_n,i
  total    = L_simple + L_u + L_UAL  (+ sum_i L_n,i with use_unweighted_loss)
`variant='seed'` (the early-stopping-diffusion seed's train.py): w_i = u_hat_i, which carries gradient into the exit
heads, and the seed's L_u sums over the batch as well as the exits (F.mse_loss(..., reduction='sum')), so its
per-example share is B x sum_i (u_i - u_hat_i)^2 at micro-batch size B: reproduced here, so the numbers are the
seed's. `variant='paper'` (DeeDiff eq. 9-11): w_i = u_i, the probe's own output, and the target u_hat_i detached
in L_u; L_u per example.
Logs (TensorBoard `<phase>/<name>`): L_simple, L_u, L_UAL, L_unweighted and, per exit i, exitNN_L_n and exitNN_u.
"""

import torch
from torch import nn

from diffscale.diffusion.base import Cond
from diffscale.diffusion.ddpm import DDPMLoss, drop_labels
from diffscale.errors import ConfigError
from diffscale.registry import OBJECTIVES

VARIANTS = ("seed", "paper")


@OBJECTIVES.register_module()
class DeeDiffLoss(DDPMLoss):
    """DDPMLoss's condition (t, noise, importance weight, label drop) and process, DeeDiff's losses (module
    docstring). Only L_simple, the plain DDPM loss of a network predicting C channels, is supported underneath:
    `loss` must be 'simple' and the variance fixed."""

    def __init__(self, variant: str = "seed", use_unweighted_loss: bool = False, **ddpm: object):
        ddpm.setdefault("variance", "fixed_small")
        ddpm.setdefault("loss", "simple")
        if ddpm["loss"] != "simple" or ddpm["variance"] == "learned_range":
            raise ConfigError(f"objective: DeeDiffLoss trains L_simple with a fixed variance; got loss="
                              f"{ddpm['loss']!r}, variance={ddpm['variance']!r}")
        if variant not in VARIANTS:
            raise ConfigError(f"objective.variant: expected one of {', '.join(VARIANTS)}, got {variant!r}")
        super().__init__(**ddpm)
        self.variant, self.use_unweighted_loss = variant, bool(use_unweighted_loss)

    def terms(self, model: nn.Module, batch: dict, cond: Cond) -> dict[str, torch.Tensor]:
        """Per-example loss terms [B] (float32) and per-exit means; 'loss' is the total before importance weights."""
        d, x0 = self.diffusion, batch["x"].float()
        labels = drop_labels(batch.get("label"), cond.get("drop"))
        t, noise = cond["t"], cond["noise"].float()
        x_t = d.q_sample(x0, t, noise)
        final, exits, u = model(x_t, d.model_time(t), labels, return_exits=True)
        y = d.target(x0, t, noise)
        l_simple = (final.float() - y).pow(2).flatten(1).mean(1)
        err = exits.float() - y.unsqueeze(0)  # [depth, B, ...]
        l_n = err.pow(2).flatten(2).mean(2)  # [depth, B]
        u_hat = torch.tanh(err.abs()).flatten(2).mean(2)  # [depth, B]
        u = u.float()
        if self.variant == "seed":
            l_u = (u - u_hat).pow(2).sum(0) * x0.shape[0]  # the seed's sum over the batch, as a per-example share
            l_ual = ((1 - u_hat) * l_n).sum(0)
        else:
            l_u = (u - u_hat.detach()).pow(2).sum(0)
            l_ual = ((1 - u) * l_n).sum(0)
        l_unweighted = l_n.sum(0)
        total = l_simple + l_u + l_ual + (l_unweighted if self.use_unweighted_loss else 0.0)
        return {"loss": total, "L_simple": l_simple, "L_u": l_u, "L_UAL": l_ual, "L_unweighted": l_unweighted,
                "exit_L_n": l_n.detach().mean(1), "exit_u": u.detach().mean(1)}

    def logs(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logs = {k: terms[k].mean().detach() for k in ("L_simple", "L_u", "L_UAL", "L_unweighted")}
        for i, (l_n, u) in enumerate(zip(terms["exit_L_n"], terms["exit_u"], strict=True)):
            logs[f"exit{i:02d}_L_n"], logs[f"exit{i:02d}_u"] = l_n, u
        return logs
