#!/usr/bin/env python
"""tools/export_checkpoint.py CKPT OUT: write the consolidated model and EMA weights of a checkpoint of
any strategy (ddp, fsdp, deepspeed) as one safetensors file. Keys: 'model.<param>' and
'ema.<average>.<param>' (e.g. 'ema.pf_0.050.net.inp.weight'); the metadata holds step, nimg, strategy."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint", help="a checkpoint directory (work_dir/checkpoints/iter_XXXXXXX)")
    p.add_argument("out", help="output .safetensors path")
    args = p.parse_args(argv)
    from safetensors.torch import save_file

    from diffscale.engine.export import flat_weights

    try:
        tensors, meta = flat_weights(args.checkpoint)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, args.out,
              metadata={k: json.dumps(v) for k, v in meta.items()})
    n_model = sum(k.startswith("model.") for k in tensors)
    print(f"wrote {args.out}: {n_model} model tensors, averages {meta['averages']}, step {meta['step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
