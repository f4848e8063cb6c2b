"""P-DukeMTMC-reID TFDS builder (``p_dukemtmc_reid``)."""

from reid_jax_datasets.p_dukemtmc_reid.p_dukemtmc_reid import PDukemtmcReid

__all__ = ['PDukemtmcReid']
