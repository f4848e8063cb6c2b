"""Market-1501 TFDS builder (``market1501``, configs ``default`` and ``distractors_500k``)."""

from reid_jax_datasets.market1501.market1501 import Market1501

__all__ = ['Market1501']
