"""VeRi-776 (Liu et al., ECCV 2016 / ICME 2016): 776 vehicles, 20 cameras.

File names ``0001_c001_00016450_0.jpg``: vehicle id, camera 1-20 (three digits), frame, index.
All images are kept: unlike TransReID, nothing is dropped for a missing viewpoint label.
"""

from __future__ import annotations

import re

from reid_jax_datasets import _common


class Veri776(_common.FolderReidBuilder):
  """VeRi-776 vehicle ReID benchmark (manual download, on request)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Request VeRi-776 from its authors (VeRi project page), extract it and point --manual_dir at the
folder holding (or containing) VeRi/ with image_train/, image_query/ and image_test/ inside.
"""

  HOMEPAGE = 'https://vehiclereid.github.io/VeRi/'
  NUM_CAMERAS = 20
  WRAPPERS = ('VeRi', 'veri', 'VeRi-776')
  SPLIT_FOLDERS = {'train': 'image_train', 'query': 'image_query', 'gallery': 'image_test'}
  NAME_PATTERN = re.compile(r'(-?\d+)_c(\d+)')
  NAME_EXAMPLE = '0001_c001_00016450_0.jpg'
  PUBLISHED = {None: {'train': _common.Published(37_778, 576),
                      'query': _common.Published(1_678, 200),
                      'gallery': _common.Published(11_579, 200)}}
