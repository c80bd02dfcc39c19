"""An FSDP2 checkpoint saved on 2 ranks loads on 1 rank (torch.distributed.checkpoint reshards)."""

import pytest

from tests.helpers import SMALL, export, last_checkpoint, max_abs_diff, train

pytestmark = pytest.mark.dist


def test_save_on_two_ranks_resume_on_one(tmp_path):
    train(SMALL, tmp_path, nproc=2, options=("strategy.type=fsdp",))
    saved = export(last_checkpoint(tmp_path), tmp_path / "two.safetensors")
    # One more step on a single rank with lr 1e-30 (below every weight's ulp; 0 is refused as a config error): Adam
    # leaves the weights exactly as loaded, so the new
    # checkpoint shows what was loaded. The batch arithmetic changes with the world size (accum 2 -> 4).
    out = train(SMALL, tmp_path, nproc=1,
                options=("strategy.type=fsdp", "train_cfg.max_iters=11", "optimizer.lr=1e-30"), extra=("--resume",))
    assert "resuming a 2-rank checkpoint on 1 ranks" in out.stderr
    assert last_checkpoint(tmp_path).name == "iter_0000011"
    loaded = export(last_checkpoint(tmp_path), tmp_path / "one.safetensors")
    model = lambda w: {k: v for k, v in w.items() if k.startswith("model.")}
    assert max_abs_diff(model(saved), model(loaded)) == 0.0
    # The EMA carried over too and took exactly one more update towards the (unchanged) weights.
    for key in saved:
        if key.startswith("ema.decay_0.9."):
            expected = 0.9 * saved[key] + 0.1 * saved["model." + key[len("ema.decay_0.9."):]]
            assert (loaded[key] - expected).abs().max().item() < 1e-6
