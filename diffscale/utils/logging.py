"""The `diffscale` logger: stderr and work_dir/train.log on rank 0, warnings only elsewhere."""

import logging
import sys
from pathlib import Path


def setup_logging(work_dir: Path | None, is_main: bool) -> logging.Logger:
    logger = logging.getLogger("diffscale")
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if work_dir is not None and is_main:
        file_handler = logging.FileHandler(Path(work_dir) / "train.log")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger
