"""Occluded-REID TFDS builder (``occluded_reid``, test-only)."""

from reid_jax_datasets.occluded_reid.occluded_reid import OccludedReid

__all__ = ['OccludedReid']
