"""The selector contract (README, "Online data curation") and the Gumbel top-k draw that every stochastic selector uses.

select(learner_loss[B], ref_loss[B] | None, n_select, generator) -> LongTensor[n_select]: unique indices
into the super-batch, on the losses' device, O(B) memory, no host synchronisation.
"""

import torch


class Selector:
    """`needs_ref`: whether `select` reads the reference model's loss (the caller may skip computing it)."""

    needs_ref = False

    def __call__(self, learner_loss: torch.Tensor, ref_loss: torch.Tensor | None, n_select: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        return self.select(learner_loss, ref_loss, n_select, generator)

    def select(self, learner_loss: torch.Tensor, ref_loss: torch.Tensor | None, n_select: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def check(self, learner_loss: torch.Tensor, ref_loss: torch.Tensor | None, n_select: int) -> None:
        """Shape checks only (no values are read, so no host sync)."""
        if learner_loss.ndim != 1:
            raise ValueError(f"learner_loss: expected shape [B], got {tuple(learner_loss.shape)}")
        if not 0 < n_select <= learner_loss.shape[0]:
            raise ValueError(f"n_select: expected 1..{learner_loss.shape[0]}, got {n_select}")
        if self.needs_ref and (ref_loss is None or ref_loss.shape != learner_loss.shape):
            raise ValueError(f"{type(self).__name__} needs ref_loss of shape {tuple(learner_loss.shape)}")


def gumbel(shape: torch.Size, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """Standard Gumbel noise; adding it to logits and taking the top k draws k items without replacement
    with probabilities softmax(logits), renormalised after each draw (Gumbel top-k; Kool et al. 2019)."""
    u = torch.rand(shape, device=device, generator=generator, dtype=torch.float32)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float32).tiny)))


def gumbel_topk(logits: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """k distinct indices drawn without replacement from softmax(logits); -inf logits are never drawn
    while finite ones remain. Works in log space, so logits of any scale are safe (no exp overflow)."""
    keys = logits.float() + gumbel(logits.shape, logits.device, generator)
    return keys.topk(k, sorted=False).indices
