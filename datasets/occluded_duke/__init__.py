"""Occluded-DukeMTMC TFDS builder (``occluded_duke``)."""

from reid_jax_datasets.occluded_duke.occluded_duke import OccludedDuke

__all__ = ['OccludedDuke']
