"""VeRi-776 vehicle ReID TFDS builder (``veri776``)."""

from reid_jax_datasets.veri776.veri776 import Veri776

__all__ = ['Veri776']
