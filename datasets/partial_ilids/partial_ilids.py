"""Partial-iLIDS (Zheng et al., 2015, from iLIDS): 119 ids, one partial and one whole image each.

Test-only (train on Market-1501): query = ``partial_body_images/<pid>.jpg``, gallery =
``whole_body_images/<pid>.jpg`` (fast-reid's copy names them ``query/`` and ``gallery/``; both
layouts are accepted). Query camid 0, gallery camid 1.
"""

from __future__ import annotations

import re

from reid_jax_datasets import _common


class PartialIlids(_common.QueryGalleryBuilder):
  """Partial-iLIDS benchmark (test-only: query and gallery splits, no train)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Get Partial-iLIDS (distributed with the Partial-REID data), extract it and point --manual_dir at the
folder holding (or containing) Partial_iLIDS/ with partial_body_images/ and whole_body_images/
inside (or PartialiLIDS/ with query/ and gallery/ inside).
"""

  LAYOUTS = ({'query': 'partial_body_images', 'gallery': 'whole_body_images'},
             {'query': 'query', 'gallery': 'gallery'})
  WRAPPERS = ('Partial_iLIDS', 'PartialiLIDS')
  NAME_PATTERN = re.compile(r'(\d+)\.')
  NAME_EXAMPLE = '001.jpg'
  PUBLISHED = {None: {'query': _common.Published(119, 119),
                      'gallery': _common.Published(119, 119)}}
