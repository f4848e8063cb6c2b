"""Occluded-DukeMTMC (Miao et al., ICCV 2019): a re-split of DukeMTMC-reID with occluded queries.

Same folders and file names as DukeMTMC-reID (camera 1-8). Every query image is occluded, and about
10% of the gallery images are.
"""

from __future__ import annotations

from reid_jax_datasets import _common
from reid_jax_datasets.dukemtmc_reid import dukemtmc_reid


class OccludedDuke(_common.FolderReidBuilder):
  """Occluded-DukeMTMC person ReID benchmark (made from a DukeMTMC-reID copy)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Occluded-DukeMTMC ships only file lists and a conversion script (lightas/Occluded-DukeMTMC-Dataset
on GitHub). Run its convert_duke_to_occduke.py on your copy of DukeMTMC-reID.zip, then point
--manual_dir at the folder holding (or containing) Occluded_Duke/ with bounding_box_train/, query/
and bounding_box_test/ inside.
"""

  HOMEPAGE = 'https://github.com/lightas/Occluded-DukeMTMC-Dataset'
  NUM_CAMERAS = 8
  WRAPPERS = ('Occluded_Duke',)
  SPLIT_FOLDERS = dukemtmc_reid.DUKE_SPLIT_FOLDERS
  NAME_PATTERN = dukemtmc_reid.DUKE_NAME_PATTERN
  NAME_EXAMPLE = dukemtmc_reid.DUKE_NAME_EXAMPLE
  # PGFA (ICCV'19) figures; the commonly cited ones.
  PUBLISHED = {None: {'train': _common.Published(15_618, 702),
                      'query': _common.Published(2_210, 519),
                      'gallery': _common.Published(17_661, 1_110)}}
