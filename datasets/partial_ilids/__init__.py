"""Partial-iLIDS TFDS builder (``partial_ilids``, test-only)."""

from reid_jax_datasets.partial_ilids.partial_ilids import PartialIlids

__all__ = ['PartialIlids']
