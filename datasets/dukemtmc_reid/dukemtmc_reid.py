"""DukeMTMC-reID (Zheng et al., ICCV 2017): 1,404 ids + 408 gallery distractor ids, 8 cameras.

File names ``0001_c2_f0046182.jpg``: pid, camera 1-8, frame. There is no junk (-1) and no pid 0000;
the 408 distractor ids are ordinary pids that only appear in the gallery.
"""

from __future__ import annotations

import re

from reid_jax_datasets import _common

DUKE_SPLIT_FOLDERS = {'train': 'bounding_box_train', 'query': 'query',
                      'gallery': 'bounding_box_test'}
DUKE_NAME_PATTERN = re.compile(r'(-?\d+)_c(\d)')
DUKE_NAME_EXAMPLE = '0001_c2_f0046182.jpg'


class DukemtmcReid(_common.FolderReidBuilder):
  """DukeMTMC-reID person ReID benchmark (manual download; the data was withdrawn)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
DukeMTMC-reID has been withdrawn by its authors and has no official download any more. If you hold
a copy of DukeMTMC-reID.zip, extract it and point --manual_dir at the folder holding (or
containing) DukeMTMC-reID/ with bounding_box_train/, query/ and bounding_box_test/ inside.
"""

  HOMEPAGE = 'https://github.com/layumi/DukeMTMC-reID_evaluation'
  NUM_CAMERAS = 8
  WRAPPERS = ('DukeMTMC-reID', 'dukemtmc-reid/DukeMTMC-reID')
  SPLIT_FOLDERS = DUKE_SPLIT_FOLDERS
  NAME_PATTERN = DUKE_NAME_PATTERN
  NAME_EXAMPLE = DUKE_NAME_EXAMPLE
  PUBLISHED = {None: {'train': _common.Published(16_522, 702),
                      'query': _common.Published(2_228, 702),
                      'gallery': _common.Published(17_661, 1_110)}}
