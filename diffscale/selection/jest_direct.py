"""Textbook JEST on the full B x B score matrix, for tests and benchmarks only (O(B^2) memory).

It computes the conditional logits (s_ii + sum_{j in S} (s_ij + s_ji)) / (2|S| + 1) from the matrix itself
and draws each chunk with torch.multinomial, so it shares no algebra or sampling code with `jest.JEST`.
"""

import torch

from diffscale.selection.jest import chunk_sizes


def score_matrix(learner: torch.Tensor, ref: torch.Tensor, score: str) -> torch.Tensor:
    if score == "learnability":
        return learner[:, None] - ref[None, :]
    if score == "easy_reference":
        return (-ref)[None, :].expand(len(ref), -1)
    return ref[None, :] - learner[:, None]


def direct_jest(learner: torch.Tensor, ref: torch.Tensor, n_select: int, n_chunks: int, score: str,
                generator: torch.Generator | None = None) -> torch.Tensor:
    s = score_matrix(learner.float(), ref.float(), score)
    chosen = torch.zeros(len(learner), dtype=torch.bool, device=learner.device)
    out = []
    for c, size in enumerate(chunk_sizes(n_select, n_chunks)):
        if c == 0:
            logits = torch.zeros(len(learner), device=learner.device)
        else:
            S = chosen.float()
            logits = (s.diagonal() + s @ S + S @ s) / (2 * S.sum() + 1)
        probs = torch.softmax(logits.masked_fill(chosen, float("-inf")), 0)
        idx = torch.multinomial(probs, size, replacement=False, generator=generator)
        chosen[idx] = True
        out.append(idx)
    return torch.cat(out)
