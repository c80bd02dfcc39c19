"""Top-k accuracy against a hand-counted example, through the function and the evaluator."""

import torch

from diffscale.evaluation.classifier import ClassifierAccuracy, topk_correct
from tests.unit.evaluation.stand_ins import FixedLogits, images_of

# 6 examples, 7 classes. Rank of the true label among the logits, counted by hand:
LOGITS = torch.tensor([
    [9.0, 1, 2, 3, 4, 5, 6],  # label 0: the largest            -> top-1 and top-5
    [1.0, 9, 8, 7, 6, 5, 4],  # label 2: second                 -> top-5
    [1.0, 2, 3, 4, 5, 6, 7],  # label 1: sixth                  -> neither
    [7.0, 6, 5, 4, 3, 2, 1],  # label 4: fifth                  -> top-5
    [0.0, 0, 0, 0, 0, 0, 0],  # label 3: a tie everywhere; topk keeps classes 0..4 -> top-5 only
    [0.0, 0, 0, 0, 0, 0, 0],  # label 6: the same tie, class 6 is outside the first five -> neither
])
LABELS = torch.tensor([0, 2, 1, 4, 3, 6])
TOP1, TOP5 = 1, 4


def test_topk_counts_by_hand():
    assert topk_correct(LOGITS, LABELS, (1, 5)).tolist() == [TOP1, TOP5]
    assert topk_correct(LOGITS, LABELS, (1, 2, 7)).tolist() == [1, 2, 6]
    assert topk_correct(LOGITS[:, :3], LABELS.clamp(max=2), (1, 5)).tolist()[1] == 6  # k > classes: all


def test_evaluator_accumulates_over_batches():
    evaluator = ClassifierAccuracy(random_weights=True, num_classes=7)
    evaluator._net = FixedLogits(LOGITS)
    evaluator.begin()
    images = images_of(6, torch.Generator().manual_seed(0))
    for part, labels in zip(images.split([4, 2]), LABELS.split([4, 2]), strict=True):
        evaluator.update(part, labels)
    assert evaluator.compute() == {"top1_acc": TOP1 / 6, "top5_acc": TOP5 / 6}
    assert not evaluator.comparable
