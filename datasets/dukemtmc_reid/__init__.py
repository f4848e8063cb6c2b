"""DukeMTMC-reID TFDS builder (``dukemtmc_reid``)."""

from reid_jax_datasets.dukemtmc_reid.dukemtmc_reid import DukemtmcReid

__all__ = ['DukemtmcReid']
