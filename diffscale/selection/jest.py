"""JEST: joint example selection (Evans et al. 2024), as the AJEST work applies it to diffusion training.

The super-batch is split into `n_chunks` draws. The first chunk is uniform; each later chunk is drawn
without replacement from the softmax of the conditional logits of the score matrix s_ij given the set S
chosen so far: (s_ii + sum_{j in S} (s_ij + s_ji)) / (2|S| + 1).

For the scores used here s_ij is a sum of a row term and a column term, so the conditional logit of
example i is ((|S| + 1) / (2|S| + 1)) * v_i + (a constant over i), with v_i the diagonal score
(learnability: s_ij = l_i - r_j, v = l - r; easy reference: s_ij = -r_j, v = -r; inverted: v = r - l).
The constant cancels in the softmax, so each chunk is a Gumbel top-k over B logits: O(B) memory, no B x B
matrix, stable for losses of any scale, and no host synchronisation.
"""

import torch

from diffscale.registry import SELECTORS
from diffscale.selection.base import Selector, gumbel_topk

SCORES = ("learnability", "easy_reference", "inverted")


def chunk_sizes(n_select: int, n_chunks: int) -> list[int]:
    """n_select split into n_chunks sizes differing by at most one (larger first)."""
    n_chunks = min(n_chunks, n_select)
    return [n_select // n_chunks + (1 if c < n_select % n_chunks else 0) for c in range(n_chunks)]


def diagonal_score(learner_loss: torch.Tensor, ref_loss: torch.Tensor, score: str) -> torch.Tensor:
    learner, ref = learner_loss.float(), ref_loss.float()
    if score == "learnability":
        return learner - ref
    if score == "easy_reference":
        return -ref
    return ref - learner


@SELECTORS.register_module(name="jest")
class JEST(Selector):
    needs_ref = True

    def __init__(self, n_chunks: int = 8, score: str = "learnability"):
        if score not in SCORES:
            raise ValueError(f"selector.score: expected one of {SCORES}, got '{score}'")
        if n_chunks < 1:
            raise ValueError(f"selector.n_chunks: expected >= 1, got {n_chunks}")
        self.n_chunks, self.score = n_chunks, score

    def select(self, learner_loss: torch.Tensor, ref_loss: torch.Tensor | None, n_select: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
        self.check(learner_loss, ref_loss, n_select)
        v = diagonal_score(learner_loss, ref_loss, self.score)
        taken = torch.zeros_like(v, dtype=torch.bool)
        chosen, n_chosen = [], 0
        for c, size in enumerate(chunk_sizes(n_select, self.n_chunks)):
            # Chunk 0 is uniform; later chunks temper the score by (|S| + 1) / (2|S| + 1).
            logits = torch.zeros_like(v) if c == 0 else v * ((n_chosen + 1) / (2 * n_chosen + 1))
            idx = gumbel_topk(logits.masked_fill(taken, float("-inf")), size, generator)
            taken[idx] = True
            chosen.append(idx)
            n_chosen += size
        return torch.cat(chosen)
