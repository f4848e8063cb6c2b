"""Occluded-REID (Zhuo et al., ICME 2018): 200 ids x (5 occluded + 5 whole-body) images.

Test-only (train on Market-1501): query = the occluded images, gallery = the whole-body images, in
per-pid folders ``<pid>/<pid>_<nn>.tif``. Query camid 0, gallery camid 1. TIFF is not a TFDS image
encoding, so the images are re-encoded losslessly as PNG.
"""

from __future__ import annotations

import re

from reid_jax_datasets import _common


class OccludedReid(_common.QueryGalleryBuilder):
  """Occluded-REID benchmark (test-only: query and gallery splits, no train)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Get Occluded-REID from its authors (see the ICME 2018 paper, Zhuo et al.), extract it and point
--manual_dir at the folder holding (or containing) Occluded_REID/ with occluded_body_images/ and
whole_body_images/ inside (one sub-folder per pid).
"""

  IMAGE_FORMAT = 'png'
  LAYOUTS = ({'query': 'occluded_body_images', 'gallery': 'whole_body_images'},)
  WRAPPERS = ('Occluded_REID', 'OccludedREID')
  SUFFIXES = ('.tif', '.tiff', '.jpg', '.png')
  RECURSIVE = True
  NAME_PATTERN = re.compile(r'(\d+)_\d+\.')
  NAME_EXAMPLE = '001_01.tif'
  PUBLISHED = {None: {'query': _common.Published(1_000, 200),
                      'gallery': _common.Published(1_000, 200)}}
