"""grain pipelines over synthetic_reid/tiny: batches, determinism, resume, processes, eval."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from reid_jax import data
from reid_jax.data import sampler
from tests import synthetic_tiny


@pytest.fixture(scope='module')
def data_dir():
  return synthetic_tiny.data_dir()


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _train_labels(data_dir):
  src = tfds.data_source('synthetic_reid/tiny', split='train', data_dir=data_dir, download=False,
                         decoders={k: tfds.decode.SkipDecoding()
                                   for k in ('image', 'parsing', 'texture')})
  return np.array([src[i]['label'] for i in range(len(src))])


def test_train_batches_follow_the_plan(data_dir):
  c = synthetic_tiny.input_config(parsing=True, texture=True)
  it = data.train_iterator(c, seed=3, data_dir=data_dir)
  try:
    batches = _take(it, 2)
  finally:
    it.close()
  labels = _train_labels(data_dir)
  plan = sampler.epoch_plan(labels, c.p, c.k, seed=3, epoch=0)
  b = c.p * c.k
  for i, batch in enumerate(batches):
    assert batch['image'].shape == (b, 64, 32, 3) and batch['image'].dtype == np.float32
    assert batch['parsing'].shape == (b, 64, 32) and batch['parsing'].dtype == np.uint8
    assert batch['texture'].shape == (b, 64, 64, 3)
    assert batch['texture'].min() >= -1 and batch['texture'].max() <= 1
    for key in ('label', 'pid', 'camid', 'epoch'):
      assert batch[key].shape == (b,) and batch[key].dtype == np.int32
    np.testing.assert_array_equal(batch['label'], labels[plan[i].reshape(-1)])
    assert (batch['epoch'] == 0).all()
    groups = batch['pid'].reshape(c.p, c.k)
    assert (groups == groups[:, :1]).all()
    # Same identity -> same texture (it is the identity's, not the image's).
    tex = batch['texture'].reshape(c.p, c.k, -1)
    assert all(np.array_equal(t[0], t[j]) for t in tex for j in range(c.k))
  # ImageNet normalisation: a pixel value v maps to (v/255 - mean)/std, range bounded by it.
  lo = (0 - np.array(c.mean)) / np.array(c.std)
  hi = (1 - np.array(c.mean)) / np.array(c.std)
  img = batches[0]['image']
  assert np.all(img >= lo - 1e-5) and np.all(img <= hi + 1e-5)


def test_same_seed_same_batches_other_seed_differs(data_dir):
  c = synthetic_tiny.input_config()
  its = [data.train_iterator(c, seed=s, data_dir=data_dir) for s in (0, 0, 1)]
  try:
    a, b, other = (_take(it, 2) for it in its)
  finally:
    for it in its:
      it.close()
  _assert_same(a, b)
  assert not np.array_equal(a[0]['image'], other[0]['image'])


def test_resume_from_state_yields_the_same_next_batches(data_dir, tmp_path):
  c = synthetic_tiny.input_config()
  it = data.train_iterator(c, seed=0, data_dir=data_dir)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 3)
  it.close()
  fresh = data.train_iterator(c, seed=0, data_dir=data_dir)
  fresh.set_state(state)
  _assert_same(_take(fresh, 3), expected)
  fresh.close()
  # The same through orbax and grain's checkpoint handler.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  import grain  # pylint: disable=g-import-not-at-top
  it = data.train_iterator(c, seed=0, data_dir=data_dir)
  _take(it, 3)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as mngr:
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    it.close()
    restored = data.train_iterator(c, seed=0, data_dir=data_dir)
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  _assert_same(_take(restored, 3), expected)
  restored.close()


def test_process_slices_are_whole_ids_and_their_union_is_the_global_batch(data_dir):
  c = synthetic_tiny.input_config()
  whole = data.train_iterator(c, seed=0, data_dir=data_dir)
  parts = [data.train_iterator(c, seed=0, process_index=i, process_count=2, data_dir=data_dir)
           for i in range(2)]
  try:
    for _ in range(2):
      glob = next(whole)
      pieces = [next(p) for p in parts]
      for piece in pieces:
        assert piece['image'].shape[0] == c.p * c.k // 2
        groups = piece['pid'].reshape(-1, c.k)
        assert (groups == groups[:, :1]).all()
      for key in glob:  # pixel-exact: augmentation is seeded by the global position
        np.testing.assert_array_equal(np.concatenate([p[key] for p in pieces]), glob[key])
  finally:
    for it in [whole, *parts]:
      it.close()
  with pytest.raises(ValueError, match='multiple of the process count'):
    data.train_iterator(synthetic_tiny.input_config(p=3), seed=0, process_count=2,
                        data_dir=data_dir)


def test_epochs_are_marked_and_a_finite_stream_ends(data_dir):
  c = synthetic_tiny.input_config()
  plan = data.train_plan(c, seed=0, data_dir=data_dir)
  n0, n1 = plan.num_batches(0), plan.num_batches(1)
  it = data.train_iterator(c, seed=0, num_epochs=2, data_dir=data_dir)
  epochs = [int(b['epoch'][0]) for b in it]
  it.close()
  assert epochs == [0] * n0 + [1] * n1


def test_eval_batches_pad_and_mark_valid(data_dir):
  c = synthetic_tiny.input_config()
  src = tfds.data_source('synthetic_reid/tiny', split='gallery', data_dir=data_dir,
                         download=False, decoders={k: tfds.decode.SkipDecoding()
                                                   for k in ('image', 'parsing', 'texture')})
  pids = np.array([src[i]['pid'] for i in range(len(src))])
  camids = np.array([src[i]['camid'] for i in range(len(src))])
  assert (pids == -1).any() and (pids == 0).any()
  for drop_junk in (True, False):
    c.eval_drop_junk = drop_junk
    keep = np.flatnonzero(pids != -1) if drop_junk else np.arange(pids.size)
    batches = list(data.eval_batches(c, 'gallery', batch_size=24, multiple_of=8,
                                     data_dir=data_dir))
    assert len(batches) == -(-keep.size // 24)
    valid = np.concatenate([b['valid'] for b in batches])
    assert all(b['image'].shape == (24, 64, 32, 3) for b in batches)
    assert valid.sum() == keep.size and valid[:keep.size].all()   # padding only at the end
    np.testing.assert_array_equal(np.concatenate([b['pid'] for b in batches])[valid], pids[keep])
    np.testing.assert_array_equal(np.concatenate([b['camid'] for b in batches])[valid],
                                  camids[keep])
    np.testing.assert_array_equal(np.concatenate([b['index'] for b in batches])[valid], keep)
    assert (np.concatenate([b['image'] for b in batches])[~valid] == 0).all()
  with pytest.raises(ValueError, match='multiple_of=8'):
    data.eval_batches(c, 'gallery', batch_size=20, multiple_of=8, data_dir=data_dir)


def test_eval_process_slices_cover_the_global_batches(data_dir):
  c = synthetic_tiny.input_config()
  whole = list(data.eval_batches(c, 'query', batch_size=8, data_dir=data_dir))
  parts = [list(data.eval_batches(c, 'query', batch_size=8, process_index=i, process_count=2,
                                  data_dir=data_dir)) for i in range(2)]
  assert len(parts[0]) == len(parts[1]) == len(whole)
  for glob, a, b in zip(whole, *parts):
    assert a['image'].shape[0] == 4
    for key in glob:
      np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), glob[key])
  with pytest.raises(ValueError, match='process_count=3'):
    data.eval_batches(c, 'query', batch_size=8, process_count=3, data_dir=data_dir)


def test_dataset_info_and_clear_errors(data_dir, tmp_path):
  c = synthetic_tiny.input_config()
  info = data.dataset_info(c, data_dir=data_dir)
  labels = _train_labels(data_dir)
  assert info.num_classes == np.unique(labels).size
  assert info.parts is not None and info.parts[0] == 'background'
  with pytest.raises(FileNotFoundError, match='reid_jax.prepare'):
    data.dataset_info(c, data_dir=str(tmp_path))
  with pytest.raises(ValueError, match='no split'):
    list(data.eval_batches(c, 'validation', data_dir=data_dir))
  for where in (data_dir, str(tmp_path)):  # named before the dataset is even opened
    with pytest.raises(ValueError, match=r"config.input.sampler must be one of \('pk', 'balanced'"):
      data.train_plan(synthetic_tiny.input_config(sampler='mpn'), seed=0, data_dir=where)


def _geometry_candidates(raw, pad):
  """Every flip + Pad(pad)/RandomCrop result of ``raw`` ([H, W, ...] at the output size)."""
  h, w = raw.shape[:2]
  for flip in (False, True):
    src = raw[:, ::-1] if flip else raw
    padded = np.pad(src, ((pad, pad), (pad, pad)) + ((0, 0),) * (raw.ndim - 2))
    for dy in range(2 * pad + 1):
      for dx in range(2 * pad + 1):
        yield padded[dy:dy + h, dx:dx + w]


def test_balanced_sampler_with_parsing_masks_aligned_and_erased(data_dir):
  """MPN's sampler on synthetic_reid with parsing masks: batches follow the official sampler and
  every mask has its image's flip and crop, and is background where the image is erased."""
  from tests.test_sampler import _OfficialBalanced  # pylint: disable=g-import-not-at-top
  fill = -9.0  # out of the pixel range: erased pixels are exactly those equal to it
  c = synthetic_tiny.input_config(sampler='balanced', parsing=True, erasing_fill=(fill,) * 3,
                                  mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)  # image = pixels
  seed, b = 5, c.p * c.k
  it = data.train_iterator(c, seed=seed, data_dir=data_dir)
  try:
    batches = _take(it, 3)
  finally:
    it.close()
  labels = _train_labels(data_dir)
  records = np.array(_OfficialBalanced(labels, c.p, c.k, seed).epoch()).reshape(-1, b)
  assert len(records) == (labels.size - 1) // b == data.train_plan(
      c, seed=seed, data_dir=data_dir).num_batches(0)
  src = tfds.data_source('synthetic_reid/tiny', split='train', data_dir=data_dir, download=False,
                         decoders={'texture': tfds.decode.SkipDecoding()})
  erased_body = 0
  for i, batch in enumerate(batches):
    assert batch['parsing'].shape == (b, 64, 32) and batch['parsing'].dtype == np.uint8
    np.testing.assert_array_equal(batch['label'], labels[records[i]])
    for row, record in enumerate(records[i]):
      raw = src[int(record)]
      assert raw['image'].shape[:2] == (64, 32)  # stored at the output size: no resize
      image, mask = batch['image'][row], batch['parsing'][row]
      erased = np.all(image == np.float32(fill), axis=-1)
      pixels = np.rint(image).astype(int)
      matches = [(img_ref, mask_ref[..., 0]) for img_ref, mask_ref in zip(
          _geometry_candidates(raw['image'].astype(int), c.pad),
          _geometry_candidates(raw['parsing'], c.pad))
          if np.array_equal(img_ref[~erased], pixels[~erased])]
      assert matches, f'batch {i} row {row}: image is no flip/crop of its record'
      assert (mask[erased] == 0).all()
      assert any(np.array_equal(m[~erased], mask[~erased]) for _, m in matches), \
          f'batch {i} row {row}: mask not aligned with the image'
      erased_body += int(any((m[erased] != 0).any() for _, m in matches))
  assert erased_body >= 5  # erasing hit body parts, so the zeroed mask was a real change
