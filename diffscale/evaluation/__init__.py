"""Evaluators (EVALUATORS) and the evaluation pipeline; importing the package registers the evaluators."""

from diffscale.evaluation import classifier, cmmd, fd_dinov2, fid, nll, toy_metrics  # noqa: F401
