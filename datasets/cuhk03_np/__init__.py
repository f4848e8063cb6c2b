"""CUHK03-NP TFDS builder (``cuhk03_np``, configs ``labeled`` and ``detected``)."""

from reid_jax_datasets.cuhk03_np.cuhk03_np import Cuhk03Np

__all__ = ['Cuhk03Np']
