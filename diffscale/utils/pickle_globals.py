"""The globals pickled numpy arrays and scalars name, for the restricted unpicklers (dataset pickles in
data/converters.py, NVlabs network pickles in engine/import_official.py)."""

import numpy as np


def numpy_globals() -> dict[tuple[str, str], object]:
    """ndarray, dtype and the array and scalar reconstructors under both module names numpy writes (numpy 1:
    numpy.core, numpy 2: numpy._core), taken from numpy's own reducers rather than imported by name."""
    reconstruct = np.zeros(1, np.uint8).__reduce__()[0]  # multiarray._reconstruct (protocols 0-4)
    scalar = np.int64(0).__reduce__()[0]  # multiarray.scalar (numpy scalars, e.g. labels of type np.int64)
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
    return allowed
