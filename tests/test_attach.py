"""Per-image attachments (prepare --parsing_dir / --texture_dir) on the fake raw folders, the new
p_dukemtmc_reid builder, and what the input pipeline makes of them (part_masks, texture_valid).

Expected values are computed here from the files written by the test: quantisation as
floor(255 v + 0.5), labels by BPBreID's rule (tests/test_parts.py ``reference_labels``).
"""

import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from reid_jax import cli
from reid_jax import data
from reid_jax import prepare as prep
from reid_jax.data import parts
from reid_jax_datasets import _attach
from reid_jax_datasets.cuhk03_np import fake as cuhk03_fake
from reid_jax_datasets.market1501 import fake as market_fake
from reid_jax_datasets.occluded_reid import fake as occ_reid_fake
from reid_jax_datasets.p_dukemtmc_reid import fake as pduke_fake
from tests import synthetic_tiny
from tests.test_parts import EIGHT, reference_labels

tfds.disable_progress_bar()
CONVENTIONS = ('confidence_fields', 'jpg_npy', 'stem_npy')


def images_under(root):
  """Relative '/'-paths of the image files under ``root``."""
  out = []
  for dirpath, _, files in os.walk(root):
    for f in files:
      if f.lower().endswith(('.jpg', '.png', '.tif')):
        out.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, '/'))
  return sorted(out)


def label_name(basename, convention):
  stem = os.path.splitext(basename)[0]
  return {'confidence_fields': f'{basename}.confidence_fields.npy', 'jpg_npy': f'{basename}.npy',
          'stem_npy': f'{stem}.npy'}[convention]


def write_labels(label_root, rel_images, seed, *, drop_last_folder=False):
  """One random (36, hm, wm) float32 file per image, the three name conventions in turn, hm x wm
  varying; returns {image rel path: array}."""
  rng = np.random.default_rng(seed)
  out = {}
  for i, rel in enumerate(rel_images):
    folder, base = os.path.split(rel)
    if drop_last_folder:
      folder = os.path.dirname(folder)
    v = rng.random((36, 3 + i % 5, 2 + i % 3)).astype(np.float32)
    v[rng.random(v.shape) < 0.5] = 0.0
    path = os.path.join(label_root, folder, label_name(base, CONVENTIONS[i % 3]))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, v)
    out[rel] = v
  return out


def quantised(v):
  return np.floor(v.astype(np.float64) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def read_all(name, data_dir):
  """{split: {filename: record}} read back through the registered builder (no build kwargs)."""
  builder = tfds.builder(name, data_dir=data_dir)
  out = {}
  for split in builder.info.splits:
    src = builder.as_data_source(split)
    out[split] = {r['filename'].decode(): r for r in (src[i] for i in range(len(src)))}
  return out, builder


def market_with_labels(tmp_path):
  raw = market_fake.write_fake(tmp_path / 'raw')
  root = os.path.join(raw, 'Market-1501-v15.09.15')
  labels_root = tmp_path / 'masks' / 'pifpaf_maskrcnn_filtering'
  fields = write_labels(labels_root, images_under(root), seed=1)
  return raw, labels_root, fields


def test_market_parsing_fields_and_part_masks(tmp_path):
  raw, labels_root, fields = market_with_labels(tmp_path)
  data_dir = tmp_path / 'data'
  prep.prepare('market1501', raw, data_dir, check_counts='off', parsing_dir=labels_root)
  recs, builder = read_all('market1501', data_dir)
  assert 'parsing_fields' in builder.info.features and 'texture' not in builder.info.features
  n = 0
  for split in recs:
    for fname, r in recs[split].items():
      np.testing.assert_array_equal(r['parsing_fields'], quantised(fields[fname]), err_msg=fname)
      n += 1
  assert n == 9 + 4 + 13  # every image, junk and distractors included

  # The test transform's part masks against BPBreID's rule on the written files.
  cfg = synthetic_tiny.input_config(dataset='market1501', parts='eight', eval_batch_size=8)
  src = builder.as_data_source('query')
  for batch in data.eval_batches(cfg, 'query', data_dir=os.fspath(data_dir)):
    assert batch['part_masks'].shape == (8, 16, 8, 9)
    for row in np.flatnonzero(batch['valid']):
      fname = src[int(batch['index'][row])]['filename'].decode()
      want = reference_labels(quantised(fields[fname]), EIGHT, (64, 32))
      np.testing.assert_array_equal(parts.part_labels(batch['part_masks'][row]), want, fname)
    assert (batch['part_masks'][~batch['valid']] == 0).all()
  it = data.train_iterator(synthetic_tiny.input_config(
      dataset='market1501', parts='five_v', p=2, k=2, erasing='coarse_dropout'),
      seed=0, data_dir=os.fspath(data_dir))
  try:
    batch = next(it)
  finally:
    it.close()
  assert batch['part_masks'].shape == (4, 16, 8, 6) and batch['part_masks'].dtype == np.float32
  assert 'parsing' not in batch and 'texture_valid' not in batch
  np.testing.assert_allclose(batch['part_masks'].sum(-1), 1.0, atol=1e-6)

  # An existing build without the feature asked for is named, not silently reused.
  with pytest.raises(FileNotFoundError, match=r'no texture feature.*--overwrite'):
    prep.prepare('market1501', raw, data_dir, check_counts='off', texture_dir=labels_root)


def test_missing_and_malformed_label_files(tmp_path):
  raw, labels_root, fields = market_with_labels(tmp_path)
  data_dir = tmp_path / 'data'
  victim = [r for r in fields if r.startswith('query/')][2]
  for conv in CONVENTIONS:  # whichever convention it was written with
    p = labels_root / os.path.dirname(victim) / label_name(os.path.basename(victim), conv)
    if p.exists():
      os.remove(p)
      moved = p
  with pytest.raises(_attach.AttachmentError,
                     match=r'--parsing_dir: no label file for image ' + re.escape(victim)) as e:
    prep.prepare('market1501', raw, data_dir, check_counts='off', parsing_dir=labels_root)
  assert isinstance(e.value, cli.USER_ERRORS)
  stem = os.path.splitext(os.path.basename(victim))[0]
  # At the command line: one error line naming the image, no traceback, exit status 2.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, '-m', 'reid_jax.prepare', 'market1501', f'--manual_dir={raw}',
       f'--parsing_dir={labels_root}', f'--data_dir={data_dir}', '--check_counts=off'],
      cwd=root, env=dict(os.environ, PYTHONPATH=root, REID_JAX_TRACEBACK=''),
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1 and f'no label file for image {victim}' in errors[0], proc.stderr
  assert os.listdir(data_dir) == []

  np.save(moved, np.zeros((35, 4, 3), np.float32))  # wrong channel count
  with pytest.raises(_attach.AttachmentError, match=re.escape(stem) + r'.*shape \(35, 4, 3\).*'
                     r'expected float \(36, Hm, Wm\)'):
    prep.prepare('market1501', raw, data_dir, check_counts='off', parsing_dir=labels_root)
  np.save(moved, np.zeros((4, 3), np.float32))
  with pytest.raises(_attach.AttachmentError, match=r'shape \(4, 3\)'):
    prep.prepare('market1501', raw, data_dir, check_counts='off', parsing_dir=labels_root)
  np.save(moved, np.full((36, 4, 3), 1.5, np.float32))  # found while writing
  with pytest.raises(_attach.AttachmentError, match=re.escape(stem) + r'.*span \[1\.5, 1\.5\]'):
    prep.prepare('market1501', raw, data_dir, check_counts='off', parsing_dir=labels_root)
  assert os.listdir(data_dir) == []
  with pytest.raises(_attach.AttachmentError, match=r'--parsing_dir=.*nowhere: not a folder'):
    prep.prepare('market1501', raw, data_dir, check_counts='off',
                 parsing_dir=tmp_path / 'nowhere')


def test_occluded_reid_labels_without_the_pid_folder(tmp_path):
  """BPBreID's Occluded-REID labels sit in occluded_body_images/ and whole_body_images/ without
  the per-pid folder, and both folders use the same names."""
  raw = occ_reid_fake.write_fake(tmp_path / 'raw')
  rels = images_under(os.path.join(raw, 'Occluded_REID'))
  fields = write_labels(tmp_path / 'labels', rels, seed=2, drop_last_folder=True)
  prep.prepare('occluded_reid', raw, tmp_path / 'data', check_counts='off',
               parsing_dir=tmp_path / 'labels')
  recs, _ = read_all('occluded_reid', tmp_path / 'data')
  assert len(recs['query']) == len(recs['gallery']) == 6
  for split in recs:
    for fname, r in recs[split].items():
      np.testing.assert_array_equal(r['parsing_fields'], quantised(fields[fname]), err_msg=fname)
  # A query label missing from its folder is missing, although the gallery has the same name.
  query = sorted(f for f in fields if f.startswith('occluded_body_images/'))[0]
  base = os.path.basename(query)
  for conv in CONVENTIONS:
    p = tmp_path / 'labels' / 'occluded_body_images' / label_name(base, conv)
    if p.exists():
      os.remove(p)
  assert any((tmp_path / 'labels' / 'whole_body_images' / label_name(base, c)).exists()
             for c in CONVENTIONS)
  with pytest.raises(_attach.AttachmentError, match=r'no label file for image ' + re.escape(query)):
    prep.prepare('occluded_reid', raw, tmp_path / 'data', check_counts='off', overwrite=True,
                 parsing_dir=tmp_path / 'labels')


def test_p_dukemtmc_reid(tmp_path):
  raw = pduke_fake.write_fake(tmp_path / 'raw')
  root = os.path.join(raw, 'P-DukeMTMC-reID')
  rels = images_under(root)
  fields = write_labels(tmp_path / 'labels', rels, seed=3, drop_last_folder=True)
  prep.prepare('p_dukemtmc_reid', raw, tmp_path / 'data', check_counts='off',
               parsing_dir=tmp_path / 'labels')
  recs, builder = read_all('p_dukemtmc_reid', tmp_path / 'data')
  split_of = {'train': 'train', 'test/occluded_body_images': 'query',
              'test/whole_body_images': 'gallery'}
  expected = {'train': set(), 'query': set(), 'gallery': set()}
  for rel in rels:
    split = split_of['train' if rel.startswith('train/') else os.path.dirname(os.path.dirname(rel))]
    camid = 0 if '/occluded_body_images/' in rel else 1
    expected[split].add((rel, int(os.path.basename(rel).split('_')[0]), camid))
  train_pids = sorted({p for _, p, _ in expected['train']})
  for split, want in expected.items():
    got = {(f, int(r['pid']), int(r['camid'])) for f, r in recs[split].items()}
    assert got == want, split
    for f, r in recs[split].items():
      assert int(r['label']) == (train_pids.index(int(r['pid'])) if split == 'train' else -1)
      np.testing.assert_array_equal(r['parsing_fields'], quantised(fields[f]), err_msg=f)
  assert builder.info.metadata['num_train_ids'] == 3 and builder.info.metadata['num_cameras'] == 2


def solid(path, colour, size=64):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((size, size, 3), colour, np.uint8)).save(path)


def colour_of(name):
  """A distinct solid colour per image name."""
  h = sum(ord(c) * (i + 1) for i, c in enumerate(name))
  return (h % 256, (h // 7) % 256, (h // 49) % 256)


def test_cuhk03_official_texture_pack(tmp_path):
  raw = cuhk03_fake.write_fake(tmp_path / 'raw', layout='folder')
  base = os.path.join(raw, 'cuhk03')
  for rel in images_under(os.path.join(base, 'images_labeled')):
    solid(os.path.join(base, 'texture_cuhk03_labeled', rel), colour_of(rel))  # 64x64 PNGs
  prep.prepare('cuhk03_np/labeled', raw, tmp_path / 'data', check_counts='off', texture_dir=base)
  recs, builder = read_all('cuhk03_np/labeled', tmp_path / 'data')
  assert {'texture', 'texture_valid'} <= set(builder.info.features)
  for split in recs:
    for fname, r in recs[split].items():
      assert r['texture'].shape == (256, 256, 3)  # resized from 64x64
      assert (r['texture'] == colour_of(os.path.basename(fname))).all(), fname
      assert r['texture_valid']


def test_textures_by_name_and_the_skip_option(tmp_path):
  raw = market_fake.write_fake(tmp_path / 'raw')
  rels = images_under(os.path.join(raw, 'Market-1501-v15.09.15'))
  textures = tmp_path / 'textures'
  missing = [r for r in rels if r.startswith('bounding_box_train/0007_')]
  assert len(missing) == 3
  for rel in rels:
    if rel not in missing:  # PNGs named after the JPEGs' stems: train mirrored, the rest flat
      base = os.path.splitext(os.path.basename(rel))[0]
      folder = textures / 'bounding_box_train' if rel.startswith('bounding_box_train/') \
          else textures
      solid(folder / f'{base}.png', colour_of(base), size=40)
  with pytest.raises(_attach.AttachmentError, match=r'--texture_dir: no texture for image '
                     r'bounding_box_train/0007_.*and 2 more.*--missing_texture=skip'):
    prep.prepare('market1501', raw, tmp_path / 'data', check_counts='off', texture_dir=textures)
  prep.prepare('market1501', raw, tmp_path / 'data', check_counts='off', texture_dir=textures,
               missing_texture='skip', texture_size=32)
  recs, builder = read_all('market1501', tmp_path / 'data')
  assert builder.info.metadata['num_missing_textures'] == 3
  for split in recs:
    for fname, r in recs[split].items():
      assert bool(r['texture_valid']) == (fname not in missing), fname
      if fname not in missing:
        base = os.path.splitext(os.path.basename(fname))[0]
        assert r['texture'].shape == (32, 32, 3) and (r['texture'] == colour_of(base)).all()
  broken = sorted(textures.glob('*.png'))[0]
  broken.write_bytes(b'not a png')
  with pytest.raises(_attach.AttachmentError, match=re.escape(str(broken)) + r': cannot decode'):
    prep.prepare('market1501', raw, tmp_path / 'data2', check_counts='off', texture_dir=textures,
                 missing_texture='skip')
  assert os.listdir(tmp_path / 'data2') == []
  # The pipeline's texture_valid: pid 7 is exactly the images without a texture.
  cfg = synthetic_tiny.input_config(dataset='market1501', texture=True, p=2, k=2)
  it = data.train_iterator(cfg, seed=0, data_dir=os.fspath(tmp_path / 'data'))
  try:
    for _ in range(4):
      batch = next(it)
      assert batch['texture_valid'].dtype == np.bool_ and batch['texture_valid'].shape == (4,)
      np.testing.assert_array_equal(batch['texture_valid'], batch['pid'] != 7)
      assert batch['texture'].shape == (4, 32, 32, 3)
  finally:
    it.close()


def test_synthetic_parts_in_the_pipeline():
  data_dir = synthetic_tiny.data_dir()
  cfg = synthetic_tiny.input_config(parts='eight', parsing=True, eval_batch_size=16)
  g = parts.get_grouping('eight')
  n = 0
  for batch in data.eval_batches(cfg, 'query', data_dir=data_dir):
    for row in np.flatnonzero(batch['valid']):
      want = parts.synthetic_part_map(batch['parsing'][row], g)[::4, ::4]  # 64x32 stored: no resize
      np.testing.assert_array_equal(parts.part_labels(batch['part_masks'][row]), want)
      n += 1
  assert n > 0
  it = data.train_iterator(synthetic_tiny.input_config(parts='five_v', texture=True), seed=0,
                           data_dir=data_dir)
  try:
    batch = next(it)
  finally:
    it.close()
  assert batch['part_masks'].shape == (16, 16, 8, 6) and 'parsing' not in batch
  assert batch['texture_valid'].all()  # synthetic_reid: every image has its identity's texture
  labels = parts.part_labels(batch['part_masks'])
  assert set(np.unique(labels)) >= {0, 1, 2, 3, 4}


def test_parts_need_labels_and_cli_flags(tmp_path):
  raw = market_fake.write_fake(tmp_path / 'raw')
  prep.prepare('market1501', raw, tmp_path / 'data', check_counts='off')
  with pytest.raises(ValueError, match=r"config.input.parts='eight' needs per-image part labels.*"
                     r'--parsing_dir'):
    next(data.eval_batches(synthetic_tiny.input_config(dataset='market1501', parts='eight'),
                           'query', data_dir=os.fspath(tmp_path / 'data')))
  # Stripes need no labels.
  batch = next(data.eval_batches(synthetic_tiny.input_config(dataset='market1501',
                                                             parts='strp_4'),
                                 'query', data_dir=os.fspath(tmp_path / 'data')))
  assert batch['part_masks'].shape[-1] == 5
  flags = prep.CLI_FLAGS
  try:
    argv = flags(['prepare', 'synthetic_reid/tiny', f'--parsing_dir={tmp_path}'], known_only=True)
    with pytest.raises(prep.UnknownDatasetError, match=r'takes no .*--parsing_dir'):
      prep.main(argv)
  finally:
    flags.unparse_flags()
