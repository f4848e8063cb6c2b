"""Market-1501 (Zheng et al., ICCV 2015): 1,501 ids, 6 cameras, DPM boxes.

File names ``0002_c1s1_000451_03.jpg``: pid, camera 1-6, sequence, frame, DPM box index. The gallery
(``bounding_box_test``) keeps junk boxes (pid -1) and distractors (pid 0000); train never has junk.
"""

from __future__ import annotations

import dataclasses
import re

import tensorflow_datasets as tfds

from reid_jax_datasets import _common


@dataclasses.dataclass(kw_only=True)
class Market1501Config(tfds.core.BuilderConfig):
  """``extra_gallery``: a folder of extra gallery distractors (the 500k set), or None."""
  extra_gallery: str | None = None


class Market1501(_common.FolderReidBuilder):
  """Market-1501 person ReID benchmark (manual download)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download Market-1501-v15.09.15.zip from the Market-1501 project page and extract it. Point
--manual_dir at the folder holding (or containing) Market-1501-v15.09.15/ with
bounding_box_train/, query/ and bounding_box_test/ inside. For the `distractors_500k` config, also
extract the 500k distractor set into Market-1501-v15.09.15/images/.
"""

  BUILDER_CONFIGS = [
      Market1501Config(name='default', description='Standard split: 751 train / 750 test ids.'),
      Market1501Config(name='distractors_500k', extra_gallery='images',
                       description='Standard split, 500k distractors added to the gallery.'),
  ]
  HOMEPAGE = 'https://zheng-lab.cecs.anu.edu.au/Project/project_reid.html'
  NUM_CAMERAS = 6
  WRAPPERS = ('Market-1501-v15.09.15', 'market1501/Market-1501-v15.09.15', 'market1501')
  SPLIT_FOLDERS = {'train': 'bounding_box_train', 'query': 'query', 'gallery': 'bounding_box_test'}
  NAME_PATTERN = re.compile(r'(-?\d+)_c(\d)')
  NAME_EXAMPLE = '0002_c1s1_000451_03.jpg'
  PUBLISHED = {
      # bounding_box_test: 15,913 good + distractor boxes and 3,819 junk boxes (kept).
      'default': {'train': _common.Published(12_936, 751),
                  'query': _common.Published(3_368, 750),
                  'gallery': _common.Published(19_732, 751)},
      'distractors_500k': {'train': _common.Published(12_936, 751),
                           'query': _common.Published(3_368, 750),
                           'gallery': _common.Published(519_732, None)},
  }

  def _required(self):
    extra = self.builder_config.extra_gallery
    return super()._required() + ([extra + '/'] if extra else [])

  def _list_records(self, manual_dir):
    records = super()._list_records(manual_dir)
    extra = self.builder_config.extra_gallery
    if extra:
      root = _common.find_root(self.display_name, manual_dir, self._required(),
                               self.WRAPPERS)
      records['gallery'] += _common.folder_records(
          self.name, root, extra, self.NAME_PATTERN, self.NAME_EXAMPLE, self.NUM_CAMERAS)
    return records
