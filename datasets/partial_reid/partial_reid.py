"""Partial-REID (Zheng et al., ICCV 2015): 60 ids x (5 partial + 5 whole-body) images.

Test-only (train on Market-1501): query = ``partial_body_images/<pid>_<nn>.jpg``, gallery =
``whole_body_images/<pid>_<nn>.jpg``. Query camid 0, gallery camid 1 (not the image index, which
would drop true matches sharing ``<pid>_<nn>`` as "same camera").
"""

from __future__ import annotations

import re

from reid_jax_datasets import _common


class PartialReid(_common.QueryGalleryBuilder):
  """Partial-REID benchmark (test-only: query and gallery splits, no train)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Get Partial-REID from its authors (Zheng et al., ICCV 2015), extract it and point --manual_dir at
the folder holding (or containing) Partial_REID/ with partial_body_images/ and whole_body_images/
inside.
"""

  LAYOUTS = ({'query': 'partial_body_images', 'gallery': 'whole_body_images'},)
  WRAPPERS = ('Partial_REID', 'Partial-REID_Dataset', 'PartialREID')
  NAME_PATTERN = re.compile(r'(\d+)_\d+\.')
  NAME_EXAMPLE = '001_01.jpg'
  PUBLISHED = {None: {'query': _common.Published(300, 60),
                      'gallery': _common.Published(300, 60)}}
