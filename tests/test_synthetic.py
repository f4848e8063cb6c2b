"""synthetic_reid: determinism, Market-style splits, masks and textures, occluded config, build."""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from reid_jax.data import synthetic as S
from tests import synthetic_tiny

SPEC = S.SyntheticSpec(num_train_ids=8, num_test_ids=8, num_cameras=4, height=64, width=32,
                       cameras_per_id=(2, 3), images_per_visit=(2, 4), num_distractors=5,
                       num_junk=3)


def test_plan_is_deterministic_by_seed():
  assert S.plan(SPEC, 0) == S.plan(SPEC, 0)
  assert S.plan(SPEC, 0) != S.plan(SPEC, 1)


def test_market_style_splits():
  plan = S.plan(SPEC, 0)
  train, query, gallery = plan['train'], plan['query'], plan['gallery']
  train_pids = {r.pid for r in train}
  test_pids = {r.pid for r in query + gallery if r.kind == 'id'}
  assert len(train_pids) == SPEC.num_train_ids and len(test_pids) == SPEC.num_test_ids
  assert not train_pids & test_pids                                   # disjoint identities
  assert all(p >= 1 for p in train_pids | test_pids)
  # Labels: contiguous class index in sorted-pid order on train, -1 elsewhere.
  assert {r.pid: r.label for r in train} == {p: i for i, p in enumerate(sorted(train_pids))}
  assert all(r.label == -1 for r in query + gallery)
  # Distractors (pid 0) and junk (-1) only in the gallery.
  assert sum(r.pid == 0 for r in gallery) == SPEC.num_distractors
  assert sum(r.pid == -1 for r in gallery) == SPEC.num_junk
  assert all(r.pid >= 1 for r in train + query)
  # Every query has a true match in another camera; some have same-camera gallery images.
  same_cam = 0
  for q in query:
    matches = [g for g in gallery if g.pid == q.pid]
    assert any(g.camid != q.camid for g in matches)
    same_cam += any(g.camid == q.camid for g in matches)
  assert same_cam > 0
  # Unique (camera, frame) and Market-style file names.
  keys = [(r.camid, r.frame) for r in train + query + gallery]
  assert len(keys) == len(set(keys))
  q = query[0]
  assert q.filename == f'{q.pid:04d}_c{q.camid + 1}s1_{q.frame:06d}_00.png'


def test_render_is_deterministic_and_shapes_are_right():
  rec = S.plan(SPEC, 0)['train'][3]
  img, mask = S.render(SPEC, 0, rec)
  img2, mask2 = S.render(SPEC, 0, rec)
  np.testing.assert_array_equal(img, img2)
  np.testing.assert_array_equal(mask, mask2)
  assert img.shape == (64, 32, 3) and img.dtype == np.uint8
  assert mask.shape == (64, 32) and mask.dtype == np.uint8
  assert mask.max() <= S.NUM_PARTS and len(S.PARTS) == S.NUM_PARTS + 1
  labels = set(np.unique(mask).tolist())
  assert {S.BACKGROUND, S.HEAD, S.TORSO, S.LEGS} <= labels
  fg = (mask > 0).mean()
  assert 0.1 < fg < 0.6  # a person, not the whole frame
  other, _ = S.render(SPEC, 1, S.plan(SPEC, 1)['train'][3])
  assert not np.array_equal(img, other)


def test_texture_is_per_identity_and_aligned():
  plan = S.plan(SPEC, 0)
  by_id = {}
  for r in plan['train']:
    by_id.setdefault(r.identity, []).append(r)
  a, b = [recs for recs in by_id.values()][:2]
  ta = S.texture(SPEC, 0, a[0])
  assert ta.shape == (SPEC.texture_size, SPEC.texture_size, 3) and ta.dtype == np.uint8
  np.testing.assert_array_equal(ta, S.texture(SPEC, 0, a[-1]))  # same identity, same texture
  assert not np.array_equal(ta, S.texture(SPEC, 0, b[0]))
  person = S.person_of(SPEC, 0, a[0])
  # Layout: shoes fill the bottom rows, torso colour the left (front) torso corner.
  np.testing.assert_array_equal(ta[-1, 0], person.shoes.astype(np.uint8))
  assert ta[SPEC.texture_size // 8 + 1, 1].tolist() in (person.torso.astype(np.uint8).tolist(),
                                                       person.torso2.astype(np.uint8).tolist())


def test_families_share_torso_but_differ_elsewhere():
  rec = lambda i: S.Record('train', 'id', i, 1, 0, 0, 0, 'front', False)  # noqa: E731
  a, b = S.person_of(SPEC, 0, rec(0)), S.person_of(SPEC, 0, rec(1))  # family_size = 2
  assert np.array_equal(a.torso, b.torso) and a.pattern == b.pattern
  differs = [not np.array_equal(getattr(a, f), getattr(b, f))
             for f in ('hair', 'lower', 'shoes', 'item_colour', 'skin')]
  assert any(differs)


def test_occluded_config_only_adds_occluders():
  occ = dataclasses.replace(SPEC, occluded=True)
  clean_plan, occ_plan = S.plan(SPEC, 0), S.plan(occ, 0)
  assert all(q.occluded for q in occ_plan['query'])
  n_occluded = 0
  for split in ('train', 'query', 'gallery'):
    for rc, ro in zip(clean_plan[split], occ_plan[split]):
      assert dataclasses.replace(ro, occluded=False) == rc  # same records otherwise
      img_c, mask_c = S.render(SPEC, 0, rc)
      img_o, mask_o = S.render(occ, 0, ro)
      if not ro.occluded:
        np.testing.assert_array_equal(mask_c, mask_o)
        continue
      n_occluded += 1
      # Occluders only remove body parts: labels are kept or turned into background.
      assert np.all((mask_o == mask_c) | (mask_o == S.BACKGROUND))
      if rc.kind == 'id':
        assert (mask_o > 0).sum() < (mask_c > 0).sum()
  assert n_occluded >= len(occ_plan['query'])


def test_tfds_build_and_read_back():
  data_dir = synthetic_tiny.data_dir()
  builder = tfds.builder('synthetic_reid/tiny', data_dir=data_dir)
  spec, seed = builder_spec()
  plan = S.plan(spec, seed)
  for split in ('train', 'query', 'gallery'):
    src = tfds.data_source('synthetic_reid/tiny', split=split, data_dir=data_dir, download=False)
    assert len(src) == len(plan[split])
  assert builder.info.metadata['num_train_ids'] == spec.num_train_ids
  assert builder.info.metadata['num_cameras'] == spec.num_cameras
  src = tfds.data_source('synthetic_reid/tiny', split='train', data_dir=data_dir, download=False)
  ex = src[0]
  h, w = spec.height, spec.width
  assert ex['image'].shape == (h, w, 3) and ex['parsing'].shape == (h, w, 1)
  assert ex['texture'].shape == (64, 64, 3)
  # The stored pixels are the generator's (PNG is lossless); find the record by file name.
  rec = next(r for r in plan['train'] if r.filename == ex['filename'].decode())
  img, mask = S.render(spec, seed, rec)
  np.testing.assert_array_equal(ex['image'], img)
  np.testing.assert_array_equal(ex['parsing'][..., 0], mask)
  assert ex['pid'] == rec.pid and ex['label'] == rec.label and ex['camid'] == rec.camid


def builder_spec():
  """The ``tiny`` config's spec and the builder's seed."""
  from reid_jax_datasets.synthetic_reid import synthetic_reid  # pylint: disable=g-import-not-at-top
  spec = next(c.spec for c in synthetic_reid.SyntheticReid.BUILDER_CONFIGS if c.name == 'tiny')
  return spec, synthetic_reid.SEED
