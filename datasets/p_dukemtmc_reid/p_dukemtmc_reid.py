"""P-DukeMTMC-reID (Zhuo et al., ICME 2018): occluded and whole-body images of DukeMTMC-reID people.

Layout (as VlSomers/bpbreid ``torchreid/data/datasets/image/p_dukemtmc_reid.py`` reads it)::

  P-DukeMTMC-reID/train/{whole_body_images,occluded_body_images}/<pid>/<name>.jpg
  P-DukeMTMC-reID/test/occluded_body_images/<pid>/<name>.jpg   query
  P-DukeMTMC-reID/test/whole_body_images/<pid>/<name>.jpg      gallery

The pid is the file name's first '_' field. Cameras follow the occluded/whole convention of the
test-only occluded benchmarks (and BPBreID): camid 0 for occluded images (train and query), 1 for
whole-body images (train and gallery), so no true query-gallery match is dropped as same-camera.
"""

from __future__ import annotations

import os
import re

from reid_jax_datasets import _common

# (split, folder under the root, camid)
_FOLDERS = (('train', 'train/occluded_body_images', 0), ('train', 'train/whole_body_images', 1),
            ('query', 'test/occluded_body_images', 0), ('gallery', 'test/whole_body_images', 1))


class PDukemtmcReid(_common.ReidBuilder):
  """P-DukeMTMC-reID occluded person ReID benchmark (manual download)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Get P-DukeMTMC-reID from its authors (Zhuo et al., ICME 2018; the PVPM and BPBreID repositories
point to it), extract it and point --manual_dir at the folder holding (or containing)
P-DukeMTMC-reID/ with train/{whole_body_images,occluded_body_images}/ and
test/{occluded_body_images,whole_body_images}/ inside (one sub-folder per pid).
"""

  HOMEPAGE = 'https://github.com/VlSomers/bpbreid'
  NUM_CAMERAS = 2
  WRAPPERS = ('P-DukeMTMC-reID', 'P_DukeMTMC_reID')
  NAME_PATTERN = re.compile(r'(\d+)_')
  NAME_EXAMPLE = '0005_c2_f0046985.jpg'
  # The commonly cited figures (PVPM, Gao et al., CVPR 2020); the build reports any difference.
  PUBLISHED = {None: {'train': _common.Published(12_927, 665),
                      'query': _common.Published(2_163, 634),
                      'gallery': _common.Published(9_053, 634)}}

  def _list_records(self, manual_dir):
    root = _common.find_root(self.name, manual_dir, [f + '/' for _, f, _ in _FOLDERS],
                             self.WRAPPERS)
    records = {split: [] for split in self.SPLITS}
    for split, folder, camid in _FOLDERS:
      for path in _common.list_images(root / folder, ('.jpg', '.jpeg', '.png'), recursive=True):
        pid = _common.parse_name(path, self.NAME_PATTERN, self.NAME_EXAMPLE)[0]
        rel = os.fspath(path.relative_to(root)).replace(os.sep, '/')
        records[split].append(_common.Record(rel, pid, camid, os.fspath(path)))
    return records
