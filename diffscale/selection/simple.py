"""Baseline selectors: uniform random, deterministic learnability top-k, hardest-for-the-learner top-k."""

import torch

from diffscale.registry import SELECTORS
from diffscale.selection.base import Selector


@SELECTORS.register_module(name="random")
class RandomSelector(Selector):
    """Uniform without replacement: the baseline that isolates the effect of scoring."""

    def select(self, learner_loss: torch.Tensor, ref_loss: torch.Tensor | None, n_select: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
        self.check(learner_loss, ref_loss, n_select)
        B = learner_loss.shape[0]
        return torch.randperm(B, generator=generator, device=learner_loss.device)[:n_select]


@SELECTORS.register_module(name="learnability_topk")
class LearnabilityTopK(Selector):
    """The n_select largest L_learner - L_ref (greedy, no sampling)."""

    needs_ref = True

    def select(self, learner_loss: torch.Tensor, ref_loss: torch.Tensor | None, n_select: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
        self.check(learner_loss, ref_loss, n_select)
        return (learner_loss.float() - ref_loss.float()).topk(n_select, sorted=False).indices


@SELECTORS.register_module(name="hard_learner")
class HardLearner(Selector):
    """The n_select largest learner losses (no reference model)."""

    def select(self, learner_loss: torch.Tensor, ref_loss: torch.Tensor | None, n_select: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
        self.check(learner_loss, ref_loss, n_select)
        return learner_loss.float().topk(n_select, sorted=False).indices
