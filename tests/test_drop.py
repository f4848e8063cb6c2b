"""DROP (reid_jax/models/drop.py): with every switch off the model is BPBreID (same weights, same
outputs in eval and train mode, same loss); each switch changes only its side (the position
encoding and DPU only the parsing branch); part pooling, the sinusoidal table, the PCT loss and
the memory-bank update against NumPy written from the provisional definitions (docs/drop.md).

A narrow ResNet-18 (the head does not depend on the backbone) and, where the DPU needs the HRNet
branches, a narrow HRNet (width 4, one module per stage, one block per branch) at 64x32 keep it
fast.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from reid_jax import models
from reid_jax.models import bpbreid as bp
from reid_jax.models import drop as dr
from reid_jax.models.layers import resize_bilinear_align_corners
from tests.tolerances import U, sum_tol

PARTS, DIM, NUM_CLASSES = 4, 8, 5
H, W = 64, 32                                  # 16 x 8 feature map
OFF = dict(upsampling='none', position_encoding='none', part_pooling='gwap',
           detach_parsing_for_pooling=False)


RESNET = dict(backbone='resnet', depth=18, width=4, last_stride=1, stem_relu=True,
              position_rows=H // 16)               # 4 x 2 map: compiles fast
HRNET = dict(backbone='hrnet', hrnet_width=4, hrnet_stage_modules=(1, 1, 1), hrnet_blocks=1,
             hrnet_stem_width=8, position_rows=H // 4)   # 16 x 8 map


def model_config(name='drop', **kw):
  base = dict(name=name, parts=PARTS, dim=DIM, parsing_channels=8, **RESNET)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def loss_config(**kw):
  c = ml_collections.ConfigDict(dict(
      input=dict(p=2, k=3),
      loss=dict(ce_epsilon=0.1, triplet_margin=0.3, weights=bp.DEFAULT_LOSS_WEIGHTS,
                pixel_weight=0.35, pixel_epsilon=0.1, pct=True, pct_weight=1.0, pct_margin=0.3,
                pct_positive='center', bank='none', bank_size=0,
                bank_momentum=0.2)))
  c.loss.update(kw)
  return c


def images(n=6, seed=0):
  return jax.random.normal(jax.random.key(seed), (n, H, W, 3), jnp.float32)


def batch(seed=0):
  rng = np.random.default_rng(seed)
  masks = rng.random((6, H // 2, W // 2, PARTS + 1)).astype(np.float32)
  return {'image': images(seed=seed), 'label': jnp.array([0, 0, 0, 3, 3, 3]),
          'part_masks': jnp.asarray(masks)}


def same_weights(src, dst):
  """``dst`` with ``src``'s every variable (params and BN statistics)."""
  nnx.update(dst, nnx.state(src))
  return dst


def copy(model):
  return nnx.merge(*nnx.split(model))


@jax.jit
def _train_forward(graphdef, state, x):
  model = nnx.merge(graphdef, state)
  out = model(x)
  return out, nnx.state(model, nnx.BatchStat)


def train_forward(model, x):
  """Train-mode outputs and the updated running statistics, compiled (eager HRNet is slow)."""
  return _train_forward(*nnx.split(model), x)


def jit_loss(loss_fn, model, b, extra, cfg):
  graphdef, state = nnx.split(model)
  return jax.jit(lambda st, bb, e: loss_fn(nnx.merge(graphdef, st), bb, extra=e, config=cfg))(
      state, b, extra)


# ------------------------------------------------------------------------ reduces to BPBreID
def test_all_switches_off_is_bpbreid_in_eval_and_train_mode():
  bpb = models.build_model(model_config('bpbreid'), NUM_CLASSES, seed=1)
  drop = models.build_model(model_config(**OFF), NUM_CLASSES, seed=2)
  # Same variables, same shapes: no DROP-only parameter when the switches are off.
  assert jax.tree.map(jnp.shape, nnx.state(bpb)) == jax.tree.map(jnp.shape, nnx.state(drop))
  same_weights(bpb, drop)
  x = images()
  ev_b, ev_d = models.embed(bpb, x), models.embed(drop, x)
  np.testing.assert_array_equal(ev_b['feat'], ev_d['feat'])
  np.testing.assert_array_equal(ev_b['visibility'], ev_d['visibility'])
  (out_b, stats_b), (out_d, stats_d) = train_forward(bpb, x), train_forward(drop, x)
  jax.tree.map(np.testing.assert_array_equal, out_b, out_d)
  # Train mode updated the running statistics identically.
  jax.tree.map(np.testing.assert_array_equal, stats_b, stats_d)
  # The loss with PCT off is BPBreID's part_based loss.
  cfg = loss_config(pct=False)
  b = batch()
  (obj_b, met_b, _), (obj_d, met_d, aux) = (
      jit_loss(bp.part_based_loss, bpb, b, None, cfg), jit_loss(dr.drop_loss, drop, b, None, cfg))
  assert aux is None
  np.testing.assert_array_equal(obj_b['loss'], obj_d['loss'])
  assert set(met_b) == set(met_d)


def test_position_encoding_and_dpu_touch_only_the_parsing_branch():
  plain = models.build_model(model_config(**OFF), NUM_CLASSES, seed=0)
  x = images()
  ref, _ = train_forward(plain, x)
  for switch in (dict(position_encoding='learned'), dict(position_encoding='sinusoidal')):
    m = models.build_model(model_config(**{**OFF, **switch}), NUM_CLASSES, seed=0)
    nnx.update(m, nnx.state(plain, nnx.filterlib.PathContains('base')))
    out, _ = train_forward(m, x)
    np.testing.assert_array_equal(out['spatial_features'], ref['spatial_features'])
    assert out['pixel_scores'].shape == ref['pixel_scores'].shape
    assert not np.allclose(out['pixel_scores'], ref['pixel_scores']), switch


def test_dpu_parsing_features_come_from_the_branches_at_low_width():
  x = images(2)
  plain = models.build_model(model_config(**{**OFF, **HRNET}), NUM_CLASSES, seed=0)
  m = models.build_model(model_config(**{**OFF, **HRNET, 'upsampling': 'dpu'}), NUM_CLASSES)
  nnx.update(m, nnx.state(plain, nnx.filterlib.PathContains('base')))
  assert m.pixel_classifier.bn.scale.shape == (8,)           # reads C_p = parsing_channels
  m.eval()
  plain.eval()

  @nnx.jit
  def run(m, plain, x):
    _, maps = m.base(x, return_maps=True)
    feat, parsing = m.features(x)
    # DPU by hand from its layers: D4 = CR4(S4), D_i = CR_i(S_i) + Up(D_{i+1}), then the 3x3.
    d = m.dpu.reduce[3](maps[3])
    for i in (2, 1, 0):
      d = m.dpu.reduce[i](maps[i]) + resize_bilinear_align_corners(d, maps[i].shape[1:3])
    return feat, plain.base(x), parsing, m.dpu.smooth(d)
  feat, plain_feat, parsing, by_hand = run(m, plain, x)
  np.testing.assert_array_equal(feat, plain_feat)            # the ReID map is BPBreID's
  assert parsing.shape == (2, H // 4, W // 4, 8)
  np.testing.assert_array_equal(parsing, by_hand)
  concat = models.build_model(model_config(**{**HRNET, 'dpu_fuse': 'concat'}), NUM_CLASSES)
  shape = nnx.eval_shape(lambda m: m.features(x)[1], concat).shape
  assert shape == (2, H // 4, W // 4, 8)


def test_learned_position_rows_must_match_the_map():
  with pytest.raises(ValueError, match='position_rows'):
    models.build_model(model_config(**{**OFF, 'position_encoding': 'learned',
                                       'position_rows': None}), NUM_CLASSES)
  m = models.build_model(model_config(**{**OFF, 'position_encoding': 'learned',
                                         'position_rows': H // 16 + 1}), NUM_CLASSES)
  with pytest.raises(ValueError, match='position_rows'):
    train_forward(m, images(2))


def test_dpu_on_a_resnet_parses_at_layer1_and_pools_with_area_averaged_masks():
  """On a ResNet the DPU fuses layer1..layer4: the part scores are on layer1's grid (1/4), 4x
  finer than the ReID map (1/16, last stride 1); visibility comes from that fine grid and the
  embeddings are pooled with the probabilities averaged over each 4x4 block (NumPy below)."""
  m = models.build_model(model_config(**{**OFF, 'upsampling': 'dpu',
                                         'position_encoding': 'learned',
                                         'position_rows': H // 4}), NUM_CLASSES)
  out, _ = train_forward(m, images(2))
  assert out['pixel_scores'].shape == (2, H // 4, W // 4, PARTS + 1)
  assert out['spatial_features'].shape[1:3] == (H // 16, W // 16)
  probs = np.asarray(jax.nn.softmax(out['pixel_scores'], axis=-1), np.float64)
  area = probs.reshape(2, H // 16, 4, W // 16, 4, PARTS + 1).mean(axis=(2, 4))
  np.testing.assert_allclose(out['masks']['parts'], area[..., 1:], atol=8 * U)
  np.testing.assert_allclose(out['masks']['backg'], area[..., 0], atol=8 * U)
  winners = probs.argmax(-1)
  np.testing.assert_array_equal(
      out['visibility']['parts'],
      np.stack([(winners == k).any(axis=(1, 2)) for k in range(1, PARTS + 1)], axis=1))
  feat = np.asarray(out['spatial_features'], np.float64)
  gwap = (np.einsum('nhwk,nhwc->nkc', area[..., 1:], feat)
          / np.maximum(area[..., 1:].sum(axis=(1, 2)), 1e-6)[..., None])
  np.testing.assert_allclose(m.pool_parts(jnp.asarray(area[..., 1:], jnp.float32),
                                          out['spatial_features']), gwap,
                             rtol=1e-5, atol=1e-5 * np.abs(gwap).max())
  with pytest.raises(ValueError, match='whole multiple'):
    m.pooling_probs(jnp.zeros((1, 6, 5, PARTS + 1)), (4, 2))


def test_bad_choices_name_the_field():
  for field, value in (('upsampling', 'fpn'), ('position_encoding', 'rope'),
                       ('part_pooling', 'gmp'), ('dpu_fuse', 'max')):
    with pytest.raises(ValueError, match=f'config.model.{field}'):
      models.build_model(model_config(**{field: value}), NUM_CLASSES)


def test_sinusoidal_rows_formula():
  rows, ch = 7, 6
  ref = np.zeros((rows, ch))
  for p in range(rows):
    for c in range(ch):
      angle = p / 10000 ** (2 * (c // 2) / ch)
      ref[p, c] = np.sin(angle) if c % 2 == 0 else np.cos(angle)
  np.testing.assert_allclose(dr.sinusoidal_rows(rows, ch), ref, atol=4 * U * 7)


def test_gwap_plus_gmp_pooling_against_numpy():
  m = models.build_model(model_config(**{**OFF, 'part_pooling': 'gwap+gmp'}), NUM_CLASSES)
  rng = np.random.default_rng(3)
  masks = rng.random((2, 3, 4, PARTS)).astype(np.float32)
  feat = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  got = np.asarray(m.pool_parts(jnp.asarray(masks), jnp.asarray(feat)))
  ref = np.zeros((2, PARTS, 5))
  for n in range(2):
    for k in range(PARTS):
      mk = masks[n, :, :, k, None]
      ref[n, k] = (mk * feat[n]).sum((0, 1)) / max(mk.sum(), 1e-6) + (mk * feat[n]).max((0, 1))
  # Sums of 12 terms of magnitude <= ~3 (the weighted average divides by the mask mass).
  np.testing.assert_allclose(got, ref, atol=sum_tol(12, 10.0))


def test_detach_stops_the_reid_gradient_through_part_pooling():
  def grad_of_pixel_classifier(detach):
    m = models.build_model(model_config(**{**OFF, 'detach_parsing_for_pooling': detach}),
                           NUM_CLASSES)
    m.eval()   # running statistics: no BN state to mutate inside jax.grad
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)

    def f(p):
      out = nnx.merge(graphdef, p, rest).outputs(images(2))
      return jnp.sum(out['embeddings'][bp.PARTS] ** 2)
    return jax.jit(jax.grad(f))(params)['pixel_classifier']['classifier']['kernel'][...]
  assert np.all(grad_of_pixel_classifier(True) == 0)
  assert np.any(grad_of_pixel_classifier(False) != 0)


# ------------------------------------------------------------------------ PCT and memory bank
def numpy_pct(parts, labels, visible, margin, positive, bank=None):
  """The provisional PCT loss, loop by loop (docs/drop.md)."""
  f = parts / np.maximum(np.linalg.norm(parts, axis=-1, keepdims=True), 1e-12)
  n, k_parts, _ = f.shape
  terms = []
  for i in range(n):
    for k in range(k_parts):
      if not visible[i, k]:
        continue
      same = [j for j in range(n) if labels[j] == labels[i] and visible[j, k]]
      if positive == 'center':
        d_pos = np.linalg.norm(f[i, k] - np.mean([f[j, k] for j in same], axis=0))
      else:
        others = [np.linalg.norm(f[i, k] - f[j, k]) for j in same if j != i]
        if not others:
          continue
        d_pos = max(others)
      negs = [np.linalg.norm(f[i, k] - f[j, k]) for j in range(n)
              if labels[j] != labels[i] and visible[j, k]]
      if bank is not None:
        negs += [np.linalg.norm(f[i, k] - bank['features'][q, k])
                 for q in range(len(bank['labels']))
                 if bank['labels'][q] != labels[i] and bank['visible'][q, k] > 0]
      if not negs:
        continue
      terms.append(max(d_pos - min(negs) + margin, 0.0))
  return np.mean(terms) if terms else 0.0


@pytest.mark.parametrize('positive', ['center', 'hardest'])
@pytest.mark.parametrize('with_bank', [False, True])
def test_pct_loss_against_numpy(positive, with_bank):
  rng = np.random.default_rng(4)
  n, k, d, q = 8, 3, 6, 5
  parts = rng.normal(size=(n, k, d)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 1, 2, 2, 3])
  visible = rng.random((n, k)) > 0.25
  bank = None
  if with_bank:
    g = rng.normal(size=(q, k, d))
    bank = {'features': (g / np.linalg.norm(g, axis=-1, keepdims=True)).astype(np.float32),
            'labels': np.array([0, 4, 5, -1, 2], np.int32),
            'visible': np.array(rng.random((q, k)) > 0.3, np.float32)}
    bank['visible'][3] = 0                               # an empty slot
  got, info = dr.part_compactness_triplet_loss(
      jnp.asarray(parts), jnp.asarray(labels), jnp.asarray(visible), margin=0.3,
      positive=positive, bank=None if bank is None else jax.tree.map(jnp.asarray, bank))
  ref = numpy_pct(parts, labels, visible, 0.3, positive, bank)
  assert ref > 0
  # Distances of unit vectors (<= 2) from 6-term dots: a wrong term or sign is off by >> 1e-5.
  np.testing.assert_allclose(got, ref, atol=sum_tol(6, 4.0) * 10)
  assert 0 < float(info['valid_pairs']) <= 1
  grads = jax.grad(lambda p: dr.part_compactness_triplet_loss(
      p, jnp.asarray(labels), jnp.asarray(visible), positive=positive)[0])(jnp.asarray(parts))
  assert np.all(np.isfinite(grads)) and np.any(grads != 0)


def test_bank_negatives_can_only_make_the_loss_larger():
  rng = np.random.default_rng(5)
  parts = jnp.asarray(rng.normal(size=(6, 2, 4)), jnp.float32)
  labels = jnp.array([0, 0, 0, 1, 1, 1])
  vis = jnp.ones((6, 2), bool)
  alone, _ = dr.part_compactness_triplet_loss(parts, labels, vis)
  near = dr.l2_normalize(parts)                          # a copy of each anchor, another id
  bank = {'features': near, 'labels': jnp.full((6,), 9, jnp.int32),
          'visible': jnp.ones((6, 2), jnp.float32)}
  with_bank, info = dr.part_compactness_triplet_loss(parts, labels, vis, bank=bank)
  assert float(with_bank) > float(alone)
  assert float(info['bank_negatives']) == 1.0


def test_bank_update_is_a_fifo_ring_against_numpy():
  cfg = loss_config(bank='fifo', bank_size=7)
  m = models.build_model(model_config(**OFF), NUM_CLASSES)
  bank = dr.init_bank(cfg, m, NUM_CLASSES, None)
  assert bank['features'].shape == (7, PARTS, DIM) and not np.any(bank['visible'])
  ref = jax.tree.map(np.array, bank)
  rng = np.random.default_rng(6)
  for step in range(4):                                  # 4 x 3 rows wrap around 7 slots
    aux = {'features': rng.normal(size=(3, PARTS, DIM)).astype(np.float32),
           'labels': rng.integers(0, 5, 3).astype(np.int32),
           'visible': (rng.random((3, PARTS)) > 0.5).astype(np.float32)}
    bank = dr.update_bank(bank, None, jax.tree.map(jnp.asarray, aux), cfg)
    for r in range(3):
      slot = (ref['pointer'] + r) % 7
      for key in ('features', 'labels', 'visible'):
        ref[key][slot] = aux[key][r]
    ref['pointer'] = (ref['pointer'] + 3) % 7
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, bank), ref)
  assert dr.init_bank(loss_config(bank='none', bank_size=7), m, NUM_CLASSES, None) is None
  assert dr.init_bank(loss_config(bank='fifo', bank_size=7, pct=False), m, NUM_CLASSES,
                     None) is None
  with pytest.raises(ValueError, match='bank_size'):
    dr.init_bank(loss_config(bank='fifo', bank_size=5), m, NUM_CLASSES, None)   # < P*K = 6
  with pytest.raises(ValueError, match='loss.bank'):
    dr.init_bank(loss_config(bank='queue'), m, NUM_CLASSES, None)


def test_id_momentum_bank_update_against_numpy():
  """One row per identity: the visible part-k embeddings of each identity in the batch are
  averaged, blended with the old row (weight m = 0.3 on the old) and renormalised; rows of
  absent identities and invisible parts stay as they were."""
  m = models.build_model(model_config(**OFF), NUM_CLASSES)
  cfg = loss_config(bank='id_momentum', bank_momentum=0.3)
  bank = dr.init_bank(cfg, m, NUM_CLASSES, None)
  assert bank['features'].shape == (NUM_CLASSES, PARTS, DIM) and 'pointer' not in bank
  np.testing.assert_array_equal(bank['labels'], np.arange(NUM_CLASSES))
  ref = jax.tree.map(np.array, bank)
  rng = np.random.default_rng(8)
  for _ in range(3):
    f = rng.normal(size=(6, PARTS, DIM)).astype(np.float32)
    aux = {'features': f / np.linalg.norm(f, axis=-1, keepdims=True),
           'labels': np.array([0, 0, 0, 3, 3, 1], np.int32),
           'visible': (rng.random((6, PARTS)) > 0.4).astype(np.float32)}
    bank = dr.update_bank(bank, None, jax.tree.map(jnp.asarray, aux), cfg)
    for y in range(NUM_CLASSES):
      for k in range(PARTS):
        rows = [i for i in range(6) if aux['labels'][i] == y and aux['visible'][i, k]]
        if not rows:
          continue
        e = np.mean([aux['features'][i, k] for i in rows], axis=0)
        v = 0.3 * ref['features'][y, k] + 0.7 * e
        ref['features'][y, k] = v / np.linalg.norm(v)
        ref['visible'][y, k] = 1.0
    # Unit vectors after a mean, a blend and a norm over DIM terms: ~DIM + 8 roundings.
    np.testing.assert_allclose(bank['features'], ref['features'], atol=(DIM + 8) * U)
    np.testing.assert_array_equal(bank['visible'], ref['visible'])
    np.testing.assert_array_equal(bank['labels'], ref['labels'])
  assert not np.any(np.asarray(bank['visible'])[[2, 4]])     # identities never in a batch
  # The PCT loss reads it as any bank: extra negatives can only bring the hardest one closer.
  parts, labels = jnp.asarray(aux['features']), jnp.asarray(aux['labels'])
  visible = jnp.asarray(aux['visible']) > 0
  alone, info_alone = dr.part_compactness_triplet_loss(parts, labels, visible)
  with_bank, info_bank = dr.part_compactness_triplet_loss(parts, labels, visible, bank=bank)
  # Same pairs averaged (each already has a negative in the batch), so the mean cannot drop.
  assert float(info_bank['valid_pairs']) == float(info_alone['valid_pairs'])
  assert float(with_bank) >= float(alone) - 1e-6
  with pytest.raises(ValueError, match='bank_momentum'):
    dr.init_bank(loss_config(bank='id_momentum', bank_momentum=1.0), m, NUM_CLASSES, None)


def test_full_drop_loss_runs_with_the_bank_and_returns_its_aux():
  m = models.build_model(model_config(upsampling='none'), NUM_CLASSES)   # DPU: test above
  cfg = loss_config(bank='fifo', bank_size=12)
  bank = dr.init_bank(cfg, m, NUM_CLASSES, None)
  b = batch()
  obj, metrics, aux = jit_loss(dr.drop_loss, m, b, bank, cfg)
  assert np.isfinite(obj['loss']) and 'pct' in metrics and 'triplet_parts' not in metrics
  # An empty bank adds no negative: the same loss as without a bank.
  obj0, _, _ = jit_loss(dr.drop_loss, m, b, None, cfg)
  np.testing.assert_allclose(obj['loss'], obj0['loss'], rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(aux['features'], axis=-1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(aux['labels'], b['label'])
  bank = dr.update_bank(bank, None, aux, cfg)
  assert int(bank['pointer']) == 6
  soft, _, _ = jit_loss(dr.drop_loss, m, b, None, loss_config(pixel_targets='soft'))
  assert np.isfinite(soft['loss']) and float(soft['loss']) != float(obj0['loss'])


# ------------------------------------------------------------------------ in the training loop
def test_train_step_fills_the_bank_with_the_steps_part_embeddings():
  from reid_jax import config_lib, train
  c = config_lib.base_config()
  c.model = model_config(**{**OFF, 'position_encoding': 'learned', 'part_pooling': 'gwap+gmp'})
  c.input.update(p=4, k=2, size=(H, W), parts='eight', dataset='synthetic_reid/occluded')
  c.loss = loss_config(bank='fifo', bank_size=12).loss
  c.optim.update(name='sgd', momentum=0.0, nesterov=False)
  rng = np.random.default_rng(7)
  data = [{'image': rng.normal(size=(8, H, W, 3)).astype(np.float32),
           'label': np.repeat(np.arange(4), 2).astype(np.int32),
           'part_masks': rng.random((8, H // 4, W // 4, PARTS + 1)).astype(np.float32)}
          for _ in range(2)]
  fields = models.get_method('drop').batch_fields(c)
  mesh = train.make_mesh(c)
  with jax.set_mesh(mesh):
    graphdef, state, tx = train.init_state(c, NUM_CLASSES, mesh)
    assert state['extra']['features'].shape == (12, PARTS, DIM)
    model = train.model_from_state(graphdef, jax.device_get(state))
    first, _ = train_forward(model, jnp.asarray(data[0]['image']))
    step = train.make_train_step(graphdef, tx, c, mesh)
    state, metrics = step(state, train.put_batch(mesh, data[0], fields), jnp.float32(1e-3))
    assert 'pct' in metrics and float(metrics['pct_bank_negatives']) == 0.0   # empty bank
    bank = jax.device_get(state['extra'])
    assert int(bank['pointer']) == 8
    expected = np.asarray(dr.l2_normalize(first['embeddings'][bp.PARTS]))
    # Unit vectors from the same forward on another sharding (reduction order): ~1e-6 apart.
    np.testing.assert_allclose(bank['features'][:8], expected, atol=1e-4)
    np.testing.assert_array_equal(bank['labels'][:8], data[0]['label'])
    np.testing.assert_array_equal(bank['visible'][:8], first['visibility'][bp.PARTS])
    assert not np.any(bank['visible'][8:]) and np.all(bank['labels'][8:] == -1)
    state, metrics = step(state, train.put_batch(mesh, data[1], fields), jnp.float32(1e-3))
    bank = jax.device_get(state['extra'])
    assert int(bank['pointer']) == 4                   # 16 mod 12: wrapped
    np.testing.assert_array_equal(bank['labels'][8:], data[1]['label'][:4])
    np.testing.assert_array_equal(bank['labels'][:4], data[1]['label'][4:])
    np.testing.assert_array_equal(bank['labels'][4:8], data[0]['label'][4:])
