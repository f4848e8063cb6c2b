"""Partial-REID TFDS builder (``partial_reid``, test-only)."""

from reid_jax_datasets.partial_reid.partial_reid import PartialReid

__all__ = ['PartialReid']
