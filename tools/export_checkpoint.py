#!/usr/bin/env python
"""tools/export_checkpoint.py CKPT OUT [--part NAME]: write the consolidated weights and EMA averages of every
part of a checkpoint of any strategy (ddp, fsdp, deepspeed) as one safetensors file. Keys: '<part>.<param>' and
'ema.<part>.<average>.<param>' (e.g. 'ema.generator.pf_0.050.net.inp.weight'); a run whose only part is 'model'
keeps 'model.<param>' and 'ema.<average>.<param>'. Each average is a complete state dict (the part's buffers
beside the averaged parameters): the keys under 'ema.pf_0.050.' alone load strictly into a freshly built model.
`--part` writes that part alone. The metadata holds step, nimg, strategy, parts and the average names (they hold
dots: read them from there rather than splitting keys)."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint", help="a checkpoint directory (work_dir/checkpoints/iter_XXXXXXX)")
    p.add_argument("out", help="output .safetensors path")
    p.add_argument("--part", help="export only this part (e.g. generator)")
    args = p.parse_args(argv)
    from diffscale.engine.export import flat_weights, save_export

    try:
        tensors, meta = flat_weights(args.checkpoint, args.part)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    save_export(args.out, tensors, meta)  # atomic: a killed export leaves no half file
    counts = ", ".join(f"{part} {sum(k.startswith(part + '.') for k in tensors)}" for part in meta["parts"])
    print(f"wrote {args.out}: tensors per part: {counts}; averages {meta['averages']}, step {meta['step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
