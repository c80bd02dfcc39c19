#!/usr/bin/env python
"""tools/import_checkpoint.py PKL OUT.safetensors [--ema NAME] [--entry ema]: convert an NVlabs EDM pickle
(edm-cifar10-32x32-cond-vp.pkl: EDMPrecond + SongUNet) or EDM2 pickle (edm2-img512-*.pkl: Precond + UNet) into an
export file, without running the code the pickle carries (diffscale/engine/import_official.py).

The export holds the network as part 'model' ('model.<param>', float32): a part's `init=dict(checkpoint=OUT)`,
tools/generate.py and the reference / guide loaders read it. Its metadata holds the model config dict that builds
the network ('model_config', JSON; printed below, for the config's `model=`), the pickle's name and SHA-256, and for
EDM2 latent models the VAE name and latent scale / bias ('encoder'). `--ema NAME` also stores the weights as the
average NAME (the pickles hold the EMA network only), for configs whose test_cfg.ema names one.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pickle", help="an NVlabs EDM / EDM2 network pickle (.pkl)")
    p.add_argument("out", help="output .safetensors path")
    p.add_argument("--ema", metavar="NAME", help="also store the weights as average NAME (e.g. pf_0.100)")
    p.add_argument("--entry", default="ema", help="the pickle's entry holding the network (default: ema)")
    args = p.parse_args(argv)
    from diffscale.engine.import_official import import_pickle, write_export
    from diffscale.errors import ConfigError

    try:
        model_cfg, state, info = import_pickle(args.pickle, args.entry)
        write_export(args.out, model_cfg, state, info, ema_name=args.ema)
    except (ConfigError, FileNotFoundError) as exc:  # CheckpointError is a FileNotFoundError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    params = sum(v.numel() for v in state.values())
    print(f"wrote {args.out}: {info['format']} {info['class_name']}, {len(state)} tensors ({params:,} values), "
          f"sha256 {info['sha256'][:16]}...\nmodel = {json.dumps(model_cfg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
