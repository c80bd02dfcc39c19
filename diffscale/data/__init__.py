"""Data streams (DATASETS), converters and the MDS reader; importing the package registers the streams."""

from diffscale.data import streaming, toy  # noqa: F401
