"""MSMT17 TFDS builder (``msmt17``, configs v1, v2, v1_trainval, v2_trainval)."""

from reid_jax_datasets.msmt17.msmt17 import Msmt17

__all__ = ['Msmt17']
