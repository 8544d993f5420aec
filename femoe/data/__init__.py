"""Reproducible data sets of reference solutions: generation and HDF5 files.

:func:`generate` writes ``train.h5`` and ``test.h5`` for a registered problem (``femoe generate``);
:func:`read_dataset` reads one back. See :mod:`femoe.data.hdf5` for the file layout.
"""

from femoe.data.generate import SPLITS, generate, sample_rng
from femoe.data.hdf5 import Dataset, read_dataset

__all__ = ["SPLITS", "Dataset", "generate", "read_dataset", "sample_rng"]
