"""TFDS builders of the real ReID benchmarks, on fake raw folders, read back with tfds.data_source.

Expected records are computed here from the fake folder on disk (file names, list files, protocol
.mat), with parsing written independently of the builders.
"""

import os
import re
import warnings

import numpy as np
from PIL import Image
import pytest
from scipy import io as sio
import tensorflow_datasets as tfds

from reid_jax import prepare as prep
from reid_jax_datasets import _common
from reid_jax_datasets.cuhk03_np import fake as cuhk03_fake
from reid_jax_datasets.dukemtmc_reid import fake as duke_fake
from reid_jax_datasets.market1501 import Market1501
from reid_jax_datasets.market1501 import fake as market_fake
from reid_jax_datasets.msmt17 import fake as msmt_fake
from reid_jax_datasets.occluded_duke import fake as occ_duke_fake
from reid_jax_datasets.occluded_reid import fake as occ_reid_fake
from reid_jax_datasets.partial_ilids import fake as partial_ilids_fake
from reid_jax_datasets.partial_reid import fake as partial_reid_fake
from reid_jax_datasets.veri776 import fake as veri_fake

tfds.disable_progress_bar()


# ---------------------------------------------------------------------------------------------
# Helpers: build, read back, and the independent expectations.


def build(name, manual_dir, data_dir, **kw):
  """prepare() + read every split back as {split: {filename: record dict}}; returns (path, recs)."""
  kw.setdefault('check_counts', 'off')
  path = prep.prepare(name, manual_dir, data_dir, **kw)
  info = tfds.builder_from_directory(path).info
  out = {}
  for split in info.splits:
    src = tfds.data_source(name, split=split, data_dir=data_dir)
    recs = [src[i] for i in range(len(src))]
    out[split] = {r['filename'].decode(): r for r in recs}
    assert len(out[split]) == len(recs), 'duplicate filenames'
  return path, out, info


def key_set(recs):
  return {(f, int(r['pid']), int(r['camid']), int(r['label'])) for f, r in recs.items()}


def with_labels(train, query, gallery):
  """Expected (filename, pid, camid, label) sets; train labels by sorted pid, junk -1 dropped."""
  train = [t for t in train if t[1] != -1]
  order = sorted({pid for _, pid, _ in train})
  return {
      'train': {(f, p, c, order.index(p)) for f, p, c in train},
      'query': {(f, p, c, -1) for f, p, c in query},
      'gallery': {(f, p, c, -1) for f, p, c in gallery},
  }


def market_style(root, folders):
  """Parse '<pid>_c<cam>...' names per folder: pid = first '_' field; camera (1-based) = the digits
  of the second field after 'c' and before Market's 's<sequence>' ('c1s1', 'c2', 'c001')."""
  out = []
  for folder in folders:
    items = []
    for n in sorted(os.listdir(os.path.join(root, folder))):
      if n.endswith('.jpg'):
        field = n.split('_')[1]
        items.append((f'{folder}/{n}', int(n.split('_')[0]), int(field[1:].split('s')[0]) - 1))
    out.append(items)
  return out


def assert_images_match_files(recs, root):
  """Each record's decoded image equals the raw file decoded by PIL (as RGB)."""
  for fname, r in recs.items():
    with Image.open(os.path.join(root, fname)) as img:
      expected = np.asarray(img.convert('RGB'))
    np.testing.assert_array_equal(r['image'], expected, err_msg=fname)


def assert_train_labels(train_recs, num_train_ids):
  pids = sorted({int(r['pid']) for r in train_recs.values()})
  assert -1 not in pids
  labels = {int(r['pid']): int(r['label']) for r in train_recs.values()}
  assert [labels[p] for p in pids] == list(range(len(pids)))  # contiguous, sorted-pid order
  assert num_train_ids == len(pids)


# ---------------------------------------------------------------------------------------------
# Market-style folder datasets.


def test_market1501(tmp_path):
  raw = market_fake.write_fake(tmp_path / 'raw', distractors_500k=True)
  root = os.path.join(raw, 'Market-1501-v15.09.15')
  path, recs, info = build('market1501', raw, tmp_path / 'data')
  assert path.endswith(os.path.join('market1501', 'default', '1.0.0'))
  train, query, gallery = market_style(root, ['bounding_box_train', 'query', 'bounding_box_test'])
  expected = with_labels(train, query, gallery)
  for split in ('train', 'query', 'gallery'):
    assert key_set(recs[split]) == expected[split], split
  # Hand-checked facts of the fake: 9/4/13 images, junk and distractors kept in the gallery only.
  assert (len(recs['train']), len(recs['query']), len(recs['gallery'])) == (9, 4, 13)
  gallery_pids = [int(r['pid']) for r in recs['gallery'].values()]
  assert gallery_pids.count(-1) == 2 and gallery_pids.count(0) == 3
  assert not any(f.startswith('images/') for f in recs['gallery'])  # default config: no 500k
  assert_train_labels(recs['train'], info.metadata['num_train_ids'])
  assert info.metadata['num_train_ids'] == 4 and info.metadata['num_cameras'] == 6
  assert {int(r['label']) for r in recs['train'].values()} == {0, 1, 2, 3}
  # pid 1499 (the largest) gets the last label.
  assert {int(r['label']) for r in recs['train'].values() if int(r['pid']) == 1499} == {3}
  for split in recs:
    assert_images_match_files(recs[split], root)


def test_market1501_distractors_500k(tmp_path):
  raw = market_fake.write_fake(tmp_path / 'raw', distractors_500k=True)
  root = os.path.join(raw, 'Market-1501-v15.09.15')
  _, recs, _ = build('market1501/distractors_500k', raw, tmp_path / 'data')
  _, _, gallery = market_style(root, ['bounding_box_train', 'query', 'bounding_box_test'])
  (extra,) = market_style(root, ['images'])
  assert key_set(recs['gallery']) == {(f, p, c, -1) for f, p, c in gallery + extra}
  assert len(recs['gallery']) == 13 + 3


@pytest.mark.parametrize('name,fake,wrapper,folders,num_cameras', [
    ('dukemtmc_reid', duke_fake, 'DukeMTMC-reID',
     ['bounding_box_train', 'query', 'bounding_box_test'], 8),
    ('occluded_duke', occ_duke_fake, 'Occluded_Duke',
     ['bounding_box_train', 'query', 'bounding_box_test'], 8),
    ('veri776', veri_fake, 'VeRi', ['image_train', 'image_query', 'image_test'], 20),
])
def test_folder_datasets(tmp_path, name, fake, wrapper, folders, num_cameras):
  raw = fake.write_fake(tmp_path / 'raw')
  root = os.path.join(raw, wrapper)
  _, recs, info = build(name, raw, tmp_path / 'data')
  expected = with_labels(*market_style(root, folders))
  for split in ('train', 'query', 'gallery'):
    assert key_set(recs[split]) == expected[split], split
    assert_images_match_files(recs[split], root)
  assert_train_labels(recs['train'], info.metadata['num_train_ids'])
  assert info.metadata['num_cameras'] == num_cameras


def test_veri_three_digit_cameras(tmp_path):
  raw = veri_fake.write_fake(tmp_path / 'raw')
  _, recs, _ = build('veri776', raw, tmp_path / 'data')
  # 0004_c020_... is camera 20 -> camid 19 (a one-digit parse would give 1).
  assert {int(r['camid']) for f, r in recs['train'].items() if '_c020_' in f} == {19}


def test_junk_in_train_is_dropped(tmp_path):
  raw = market_fake.write_fake(tmp_path / 'raw')
  junk = 'bounding_box_train/-1_c2s1_000001_00.jpg'
  from reid_jax_datasets import _fake  # pylint: disable=import-outside-toplevel
  _fake.write_image(os.path.join(raw, 'Market-1501-v15.09.15', junk), seed=5)
  _, recs, info = build('market1501', raw, tmp_path / 'data')
  assert junk not in recs['train'] and len(recs['train']) == 9
  assert_train_labels(recs['train'], info.metadata['num_train_ids'])


# ---------------------------------------------------------------------------------------------
# Test-only datasets (query camid 0, gallery camid 1, no train split).


@pytest.mark.parametrize('name,fake,kw,wrapper,folders', [
    ('occluded_reid', occ_reid_fake, {}, 'Occluded_REID',
     ('occluded_body_images', 'whole_body_images')),
    ('partial_reid', partial_reid_fake, {}, 'Partial_REID',
     ('partial_body_images', 'whole_body_images')),
    ('partial_ilids', partial_ilids_fake, {}, 'Partial_iLIDS',
     ('partial_body_images', 'whole_body_images')),
    ('partial_ilids', partial_ilids_fake, {'fastreid_layout': True}, 'PartialiLIDS',
     ('query', 'gallery')),
])
def test_query_gallery_datasets(tmp_path, name, fake, kw, wrapper, folders):
  raw = fake.write_fake(tmp_path / 'raw', **kw)
  root = os.path.join(raw, wrapper)
  _, recs, info = build(name, raw, tmp_path / 'data')
  assert set(recs) == {'query', 'gallery'}
  for camid, (split, folder) in enumerate(zip(('query', 'gallery'), folders)):
    expected = set()
    for dirpath, _, files in os.walk(os.path.join(root, folder)):
      for n in files:
        rel = os.path.relpath(os.path.join(dirpath, n), root).replace(os.sep, '/')
        expected.add((rel, int(n.split('.')[0].split('_')[0]), camid, -1))
    assert key_set(recs[split]) == expected, split
    assert_images_match_files(recs[split], root)
  assert info.metadata['num_train_ids'] == 0 and info.metadata['num_cameras'] == 2
  # Same pids in query and gallery, so every query has a cross-"camera" match.
  assert {int(r['pid']) for r in recs['query'].values()} == {
      int(r['pid']) for r in recs['gallery'].values()}


def test_occluded_reid_tif_reencoded_as_png(tmp_path):
  raw = occ_reid_fake.write_fake(tmp_path / 'raw')
  path, recs, _ = build('occluded_reid', raw, tmp_path / 'data')
  assert all(f.endswith('.tif') for f in recs['query'])
  features = tfds.builder_from_directory(path).info.features
  assert features['image'].encoding_format == 'png'


# ---------------------------------------------------------------------------------------------
# MSMT17 (list files).


def read_list(path, folder):
  out = []
  with open(path) as f:
    for line in f:
      rel, pid = line.split()
      out.append((f'{folder}/{rel}', int(pid), int(rel.split('/')[-1].split('_')[2]) - 1))
  return out


@pytest.mark.parametrize('config,release,use_val', [
    ('v1', 'V1', False), ('v1_trainval', 'V1', True), ('v2', 'V2', False),
    ('v2_trainval', 'V2', True)])
def test_msmt17(tmp_path, config, release, use_val):
  raw = msmt_fake.write_fake(tmp_path / 'raw', release=release)
  root = os.path.join(raw, f'MSMT17_{release}')
  train_dir, test_dir = ('train', 'test') if release == 'V1' else ('mask_train_v2', 'mask_test_v2')
  train = read_list(os.path.join(root, 'list_train.txt'), train_dir)
  if use_val:
    train += read_list(os.path.join(root, 'list_val.txt'), train_dir)
  expected = with_labels(train, read_list(os.path.join(root, 'list_query.txt'), test_dir),
                         read_list(os.path.join(root, 'list_gallery.txt'), test_dir))
  _, recs, info = build(f'msmt17/{config}', raw, tmp_path / 'data')
  for split in ('train', 'query', 'gallery'):
    assert key_set(recs[split]) == expected[split], split
  assert_images_match_files(recs['query'], root)
  # Hand-checked: 7 train + 3 val images; pid 2 exists only in val.
  assert len(recs['train']) == (10 if use_val else 7)
  assert (2 in {int(r['pid']) for r in recs['train'].values()}) == use_val
  assert info.metadata['num_train_ids'] == (4 if use_val else 3)
  assert info.metadata['num_cameras'] == 15


def test_msmt17_missing_list_files(tmp_path):
  raw = msmt_fake.write_fake(tmp_path / 'raw', release='V2', with_lists=False)
  with pytest.raises(_common.LayoutError, match=r'list_train\.txt.*mask_train_v2/'):
    prep.prepare('msmt17/v2', raw, tmp_path / 'data')


def test_msmt17_listed_file_missing(tmp_path):
  raw = msmt_fake.write_fake(tmp_path / 'raw')
  with open(os.path.join(raw, 'MSMT17_V1', 'list_query.txt'), 'a') as f:
    f.write('0009/0009_000_03_0303noon_0001_0.jpg 9\n')
  with pytest.raises(_common.LayoutError, match=r'list_query\.txt:4 lists 0009/0009_000_03'):
    prep.prepare('msmt17/v1', raw, tmp_path / 'data')


# ---------------------------------------------------------------------------------------------
# CUHK03-NP (HDF5 cuhk-03.mat + protocol .mat, or images_* folders).


def expected_cuhk03(raw, subset):
  """From the protocol .mat (1-based indices): {split: {(name, pid, camid, label)}}."""
  proto = sio.loadmat(os.path.join(raw, 'cuhk03', f'cuhk03_new_protocol_config_{subset}.mat'))
  files = [str(np.asarray(c).ravel()[0]) for c in proto['filelist'].ravel()]
  labels = proto['labels'].ravel().astype(int)
  split_items = {}
  for split in ('train', 'query', 'gallery'):
    idx = proto[f'{split}_idx'].ravel().astype(int) - 1
    split_items[split] = [(f'images_{subset}/{files[i]}', int(labels[i]),
                           int(files[i].split('_')[2]) - 1) for i in idx]
  return with_labels(split_items['train'], split_items['query'], split_items['gallery'])


@pytest.mark.parametrize('subset', ['labeled', 'detected'])
def test_cuhk03_np_from_hdf5(tmp_path, subset):
  raw = cuhk03_fake.write_fake(tmp_path / 'raw', layout='mat')
  _, recs, info = build(f'cuhk03_np/{subset}', raw, tmp_path / 'data')
  expected = expected_cuhk03(raw, subset)
  arrays = cuhk03_fake.images(subset)
  for split in ('train', 'query', 'gallery'):
    assert key_set(recs[split]) == expected[split], split
    for fname, r in recs[split].items():
      np.testing.assert_array_equal(r['image'], arrays[fname.split('/')[1]][1], err_msg=fname)
  # Hand-checked: 8 ids, the first 4 train; one query per (test id, view).
  assert info.metadata['num_train_ids'] == 4 and info.metadata['num_cameras'] == 2
  assert len(recs['query']) == 4 * 2
  assert_train_labels(recs['train'], info.metadata['num_train_ids'])


def test_cuhk03_np_from_image_folders(tmp_path):
  raw = cuhk03_fake.write_fake(tmp_path / 'raw', layout='folder')
  _, recs, _ = build('cuhk03_np/detected', raw, tmp_path / 'data')
  expected = expected_cuhk03(raw, 'detected')
  for split in ('train', 'query', 'gallery'):
    assert key_set(recs[split]) == expected[split], split
  assert_images_match_files(recs['gallery'], os.path.join(raw, 'cuhk03'))


def test_cuhk03_np_missing_images(tmp_path):
  raw = cuhk03_fake.write_fake(tmp_path / 'raw', layout='mat')
  os.remove(os.path.join(raw, 'cuhk03', 'cuhk03_release', 'cuhk-03.mat'))
  with pytest.raises(_common.LayoutError, match=r'cuhk03_release/cuhk-03\.mat.*images_labeled/'):
    prep.prepare('cuhk03_np/labeled', raw, tmp_path / 'data')


# ---------------------------------------------------------------------------------------------
# Published-count check.


def test_count_check_warn_is_default(tmp_path):
  raw = market_fake.write_fake(tmp_path / 'raw')
  with pytest.warns(_common.CountMismatchWarning,
                    match=r'train: expected 12,936 images / 751 ids, found 9 images / 4 ids'):
    prep.prepare('market1501', raw, tmp_path / 'data')
  assert os.path.isdir(tmp_path / 'data' / 'market1501' / 'default' / '1.0.0')


def test_count_check_strict_fails_and_leaves_nothing(tmp_path):
  raw = market_fake.write_fake(tmp_path / 'raw')
  # Gallery ids: 1, 5, 6, 8 and the distractor pid 0 (junk -1 excluded).
  with pytest.raises(_common.CountMismatchError,
                     match=r'gallery: expected 19,732 images / 751 ids, found 13 images / 5 ids'):
    prep.prepare('market1501', raw, tmp_path / 'data', check_counts='strict')
  assert os.listdir(tmp_path / 'data') == []


def test_count_check_strict_passes_on_matching_counts(tmp_path, monkeypatch):
  raw = market_fake.write_fake(tmp_path / 'raw')
  root = os.path.join(raw, 'Market-1501-v15.09.15')
  splits = market_style(root, ['bounding_box_train', 'query', 'bounding_box_test'])
  published = {s: _common.Published(len(items), len({p for _, p, _ in items if p != -1}))
               for s, items in zip(('train', 'query', 'gallery'), splits)}
  monkeypatch.setattr(Market1501, 'PUBLISHED', {'default': published})
  with warnings.catch_warnings():
    warnings.simplefilter('error', _common.CountMismatchWarning)
    prep.prepare('market1501', raw, tmp_path / 'data', check_counts='strict')


def test_count_check_off_is_silent(tmp_path):
  raw = market_fake.write_fake(tmp_path / 'raw')
  with warnings.catch_warnings():
    warnings.simplefilter('error', _common.CountMismatchWarning)
    prep.prepare('market1501', raw, tmp_path / 'data', check_counts='off')


# ---------------------------------------------------------------------------------------------
# Bad input and atomic builds.


def test_unknown_dataset_and_config(tmp_path):
  with pytest.raises(prep.UnknownDatasetError, match=r'known: .*market1501.*veri776'):
    prep.prepare('market1502', tmp_path)
  with pytest.raises(prep.UnknownDatasetError, match=r'market1501/distractors_500k'):
    prep.prepare('market1501/500k', tmp_path)


def test_missing_manual_dir(tmp_path):
  with pytest.raises(_common.LayoutError, match=r'needs --manual_dir'):
    prep.prepare('market1501', None, tmp_path / 'data')


def test_wrong_manual_dir_lists_expected_and_found(tmp_path):
  raw = duke_fake.write_fake(tmp_path / 'raw')  # a Duke folder given to Market
  with pytest.raises(_common.LayoutError) as e:
    prep.prepare('market1501', raw, tmp_path / 'data')
  msg = str(e.value)
  assert 'bounding_box_train/, query/, bounding_box_test/' in msg
  assert 'Market-1501-v15.09.15' in msg and 'found:' in msg and 'DukeMTMC-reID/' in msg
  assert os.listdir(tmp_path / 'data') == []
  with pytest.raises(_common.LayoutError, match=r'does not exist'):
    prep.prepare('market1501', tmp_path / 'nowhere', tmp_path / 'data')


def test_bad_file_name_is_named(tmp_path):
  raw = market_fake.write_fake(tmp_path / 'raw')
  from reid_jax_datasets import _fake  # pylint: disable=import-outside-toplevel
  _fake.write_image(os.path.join(raw, 'Market-1501-v15.09.15', 'query', 'oops.jpg'), seed=1)
  with pytest.raises(ValueError, match=r'oops\.jpg.*does not look like'):
    prep.prepare('market1501', raw, tmp_path / 'data')


def _corrupt_market(tmp_path):
  """A fake Market folder with both pid-2 train images broken (garbage and truncated)."""
  raw = market_fake.write_fake(tmp_path / 'raw')
  train = os.path.join(raw, 'Market-1501-v15.09.15', 'bounding_box_train')
  bad = sorted(n for n in os.listdir(train) if n.startswith('0002_'))
  assert len(bad) == 2
  with open(os.path.join(train, bad[0]), 'wb') as f:
    f.write(b'not a jpeg at all')
  with open(os.path.join(train, bad[1]), 'r+b') as f:
    data = f.read()
    f.seek(0)
    f.truncate()
    f.write(data[:len(data) // 2])
  return raw, [f'bounding_box_train/{n}' for n in bad]


def test_corrupt_image_named_and_nothing_left(tmp_path):
  raw, bad = _corrupt_market(tmp_path)
  with pytest.raises(_common.CorruptImageError, match=re.escape(bad[0])):
    prep.prepare('market1501', raw, tmp_path / 'data', check_counts='off')
  assert os.listdir(tmp_path / 'data') == []


def test_skip_corrupt(tmp_path):
  raw, bad = _corrupt_market(tmp_path)
  _, recs, info = build('market1501', raw, tmp_path / 'data', skip_corrupt=True)
  assert sorted(info.metadata['skipped_corrupt']) == sorted(bad)
  assert not set(bad) & set(recs['train']) and len(recs['train']) == 9 - 2
  # pid 2 lost all its images: the remaining 3 ids are relabelled 0..2.
  assert_train_labels(recs['train'], info.metadata['num_train_ids'])
  assert info.metadata['num_train_ids'] == 3


def test_existing_build_is_kept_and_failed_overwrite_keeps_it(tmp_path):
  raw = market_fake.write_fake(tmp_path / 'raw')
  data = tmp_path / 'data'
  path = prep.prepare('market1501', raw, data, check_counts='off')
  stamp = os.stat(os.path.join(path, 'dataset_info.json')).st_mtime_ns
  assert prep.prepare('market1501', raw, data, check_counts='off') == path
  assert os.stat(os.path.join(path, 'dataset_info.json')).st_mtime_ns == stamp
  raw_bad, _ = _corrupt_market(tmp_path / 'second')
  with pytest.raises(_common.CorruptImageError):
    prep.prepare('market1501', raw_bad, data, check_counts='off', overwrite=True)
  assert sorted(os.listdir(data)) == ['market1501']  # no temp folder left
  assert len(tfds.data_source('market1501', split='train', data_dir=data)) == 9
  # A successful overwrite replaces it.
  assert prep.prepare('market1501', raw_bad, data, check_counts='off', overwrite=True,
                      skip_corrupt=True) == path
  assert len(tfds.data_source('market1501', split='train', data_dir=data)) == 7
  assert sorted(os.listdir(data)) == ['market1501']


def test_cli(tmp_path, capsys):
  raw = partial_ilids_fake.write_fake(tmp_path / 'raw')
  flags = prep.CLI_FLAGS
  try:
    argv = flags(['prepare', f'--manual_dir={raw}', 'partial_ilids',
                  f'--data_dir={tmp_path / "data"}', '--check_counts=off'], known_only=True)
    assert argv == ['prepare', 'partial_ilids']
    prep.main(argv)
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out == os.path.join(str(tmp_path / 'data'), 'partial_ilids', '1.0.0')
    assert len(tfds.data_source('partial_ilids', split='query', data_dir=tmp_path / 'data')) == 4
    # main raises; reid_jax.cli.run turns it into `error: ...` and exit status 2
    # (tests/test_cli_errors.py runs the command).
    with pytest.raises(prep.UnknownDatasetError, match='known: cuhk03_np'):
      prep.main(['prepare', 'nope'])
  finally:
    flags.unparse_flags()
  # Importing the module added nothing to the global absl flags (no clash with the trainer's).
  assert 'manual_dir' not in prep.flags.FLAGS and 'data_dir' not in prep.flags.FLAGS


def test_registry_covers_every_builder_package():
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  packages = {d for d in os.listdir(os.path.join(here, 'datasets'))
              if os.path.isfile(os.path.join(here, 'datasets', d, '__init__.py'))}
  assert packages <= set(prep.BUILDERS)
  for name in packages:  # (synthetic_reid included once its package is merged)
    assert prep.builder_class(name).name == name


@pytest.mark.parametrize('name', sorted(set(prep.BUILDERS) - {'synthetic_reid'}))
def test_builder_package_docs(name, tmp_path):
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  pkg = os.path.join(here, 'datasets', name)
  with open(os.path.join(pkg, 'README.md')) as f:
    readme = f.read()
  for section in ('## Manual download', '## Citation', '## Licence'):
    assert section in readme, (name, section)
  assert os.path.isfile(os.path.join(pkg, 'fake.py'))
  cls = prep.builder_class(name)
  assert cls.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()
  assert cls(data_dir=tmp_path).info.citation.startswith('@inproceedings')


def test_image_bytes_copied_or_reencoded(tmp_path):
  raw = market_fake.write_fake(tmp_path / 'raw')
  train = os.path.join(raw, 'Market-1501-v15.09.15', 'bounding_box_train')
  name = sorted(n for n in os.listdir(train) if n.endswith('.jpg'))[0]
  grey = np.arange(12 * 6, dtype=np.uint8).reshape(12, 6) * 3
  Image.fromarray(grey).save(os.path.join(train, name), quality=100)  # a mode-L JPEG
  png_name = '0002_c6s1_000001_00.jpg'
  Image.fromarray(np.full((9, 5, 3), 200, np.uint8)).save(os.path.join(train, png_name),
                                                          format='PNG')  # PNG bytes named .jpg
  _, recs, _ = build('market1501', raw, tmp_path / 'data')
  img = recs['train'][f'bounding_box_train/{name}']['image']
  assert img.shape == (12, 6, 3)
  for c in range(3):  # re-encoded as JPEG: lossy, close to the grey values in every channel
    assert np.abs(img[..., c].astype(int) - grey).mean() < 4
  img = recs['train'][f'bounding_box_train/{png_name}']['image']
  assert img.shape == (9, 5, 3) and np.abs(img.astype(int) - 200).max() < 4
  # Stored bytes: RGB JPEG files as-is; the others re-encoded as JPEG.
  src = tfds.data_source('market1501', split='train', data_dir=tmp_path / 'data',
                         decoders={'image': tfds.decode.SkipDecoding()})
  stored = {r['filename'].decode(): r['image'] for r in (src[i] for i in range(len(src)))}
  for fname, data in stored.items():
    assert data[:2] == b'\xff\xd8', fname
    if fname not in (f'bounding_box_train/{name}', f'bounding_box_train/{png_name}'):
      with open(os.path.join(train, os.path.basename(fname)), 'rb') as f:
        assert data == f.read(), fname


def test_msmt17_malformed_list_line_is_named(tmp_path):
  raw = msmt_fake.write_fake(tmp_path / 'raw')
  with open(os.path.join(raw, 'MSMT17_V1', 'list_gallery.txt'), 'a') as f:
    f.write('garbage-without-pid\n')
  with pytest.raises(ValueError, match=r'list_gallery\.txt:8: expected'):
    prep.prepare('msmt17/v1', raw, tmp_path / 'data')


def test_bad_check_counts_value(tmp_path):
  with pytest.raises(ValueError, match=r"check_counts='loud'.*warn"):
    prep.prepare('market1501', tmp_path, tmp_path / 'data', check_counts='loud')
