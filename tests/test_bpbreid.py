"""BPBreID: parity with a PyTorch reference written from the architecture
(tests/torch_reference_bpbreid.py) in eval mode (test feature, visibility, masks) and train mode
(every output, running statistics, the ``part_based`` loss and its gradients), the official
checkpoint file (``module.`` keys, a pickled yacs ``CfgNode``, NumPy scalars) loaded without
running pickled code, the key map, and golden values of the loss pieces.

Parity bound (tests/torch_reference.py): max |diff| <= 1e-4 * max |reference| in float32 with
random weights and BN statistics. The backbone is a narrow ResNet-18 (stride 16, torchreid's
layout) for speed: the head does not depend on which backbone feeds it.
"""

import logging
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from flax import nnx

from reid_jax import models
from reid_jax.convert import keymaps, load_torch_checkpoint, load_torch_weights
from reid_jax.models import bpbreid as bp
from tests.torch_reference import (REL_BOUND, assert_close_rel, assert_running_stats_match,
                                   images, nchw, numpy_state_dict, randomize_)
from tests.torch_reference_bpbreid import (TorchBPBreID, TorchReidResNet, torch_test_feature,
                                           torch_part_based_loss)

PARTS, DIM, NUM_CLASSES = 4, 16, 6
NARROW = dict(depth=18, width=8)     # 64-channel map at stride 16
H, W = 128, 64                       # 8 x 4 feature map
PREFIX = 'backbone_appearance_feature_extractor.'


def bp_config(**kw):
  base = dict(name='bpbreid', backbone='resnet', depth=18, width=8, last_stride=1,
              stem_relu=True, parts=PARTS, dim=DIM, test_embeddings=('bn_foreg', 'parts'),
              binary_visibility_train=True, binary_visibility_test=True)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def torch_model(seed, num_classes=NUM_CLASSES, **kw):
  backbone = TorchReidResNet(num_classes, last_stride=1, **NARROW)
  return randomize_(TorchBPBreID(backbone, num_classes, parts=PARTS, dim=DIM, **kw), seed=seed)


def converted(tm, cfg=None, num_classes=NUM_CLASSES):
  cfg = cfg or bp_config()
  model = nnx.eval_shape(lambda: models.build_model(cfg, num_classes))
  report = load_torch_weights(model, numpy_state_dict(tm))
  # torchreid's ResNet keeps an ImageNet-style classifier that BPBreID never calls.
  assert report.unused == [PREFIX + 'classifier.bias', PREFIX + 'classifier.weight']
  return model


def t2n(t):
  return t.detach().numpy()


def nhwc(t):
  """torch ``[N, C, h, w]`` -> NumPy ``[N, h, w, C]``."""
  return t2n(t).transpose(0, 2, 3, 1)


# ------------------------------------------------------------------------------- layout
def test_key_map_names_every_reference_entry():
  tm = torch_model(0)
  sd = tm.state_dict()
  model = nnx.eval_shape(lambda: models.build_model(bp_config(), NUM_CLASSES))
  mapped = keymaps.keymap_for(model)
  expected = sorted(k for k in sd if not k.endswith('num_batches_tracked')
                    and not k.startswith(PREFIX + 'classifier.'))
  assert sorted(mapped) == expected
  # Head entries of the official layout (b.2 of the spec, K parts): 4 dim-reduce layers x 7,
  # pixel classifier 7, 3 + 1 + K BNClassifiers x 6 (BN 5 + classifier weight).
  head = [k for k in sd if not k.startswith(PREFIX)]
  assert len(head) == 4 * 7 + 7 + (4 + PARTS) * 6
  # Only the 2-D identity classifiers are skippable on a class-count mismatch.
  skippable = sorted(k for k, t in mapped.items() if t.classifier)
  assert skippable == sorted([f'{n}_identity_classifier.classifier.weight'
                              for n in ('global', 'background', 'foreground', 'concat_parts')]
                             + [f'parts_identity_classifier.{k}.classifier.weight'
                                for k in range(PARTS)])


# ------------------------------------------------------------------------------- eval parity
_OUTPUTS = nnx.jit(lambda m, x: m.outputs(x))  # one function: models of one structure share it


def eval_outputs(model, x):
  model.eval()
  return _OUTPUTS(model, jnp.asarray(x))


def compare_outputs(out, ref, *, binary=True):
  emb, vis, logits, scores, feats, masks = ref
  for name, value in emb.items():
    assert_close_rel(out['embeddings'][name], t2n(value), err_msg=name)
  for name, value in logits.items():
    assert_close_rel(out['logits'][name], t2n(value), err_msg=name)
  assert_close_rel(out['pixel_scores'], nhwc(scores))
  assert_close_rel(out['spatial_features'], nhwc(feats))
  # Masks are softmax probabilities of the scores: |dp_i| <= sum_j p_i |delta_ij - p_j| |ds_j|
  # <= 2 p_i (1 - p_i) max |ds| <= max |ds| / 2, so the scores' parity bound carries over at half
  # the scores' scale (sharp random-weight scores can be >> 1).
  score_scale = np.abs(t2n(scores)).max()
  for name, value in masks.items():
    want = t2n(value)
    want = want.transpose(0, 2, 3, 1) if want.ndim == 4 else want
    bound = REL_BOUND * max(1.0, 0.5 * score_scale) / max(np.abs(want).max(), 1e-30)
    assert_close_rel(out['masks'][name], want, bound=bound, err_msg=name)
  for name, value in vis.items():
    got = np.asarray(out['visibility'][name])
    if binary:
      assert got.dtype == bool, name
      np.testing.assert_array_equal(got, t2n(value), err_msg=name)
    else:
      assert_close_rel(got, t2n(value), err_msg=name)


@pytest.mark.parametrize('binary', [True, False])
def test_eval_outputs_and_test_feature_match_torch(binary):
  tm = torch_model(1, binary_train=binary, binary_test=binary).eval()
  model = converted(tm, bp_config(binary_visibility_train=binary, binary_visibility_test=binary))
  x = images(b=3, h=H, w=W, seed=2)
  with torch.no_grad():
    ref = tm(nchw(x))
  compare_outputs(eval_outputs(model, x), ref, binary=binary)
  # The stable API: embed returns the engine's test embeddings, bn_foreg then the K parts.
  got = models.embed(model, x)
  ref_feat, ref_vis = torch_test_feature(ref)
  assert set(got) == {'feat', 'visibility'}
  assert got['feat'].shape == (3, 1 + PARTS, DIM)
  assert_close_rel(got['feat'], t2n(ref_feat))
  if binary:
    np.testing.assert_array_equal(np.asarray(got['visibility']), t2n(ref_vis))
  else:
    assert got['visibility'].dtype == jnp.float32
    assert_close_rel(got['visibility'], t2n(ref_vis))


def test_invisible_parts_and_foreground_visibility():
  """A part that never wins the per-pixel argmax is invisible (binary); the foreground
  visibility is the max over all K+1 columns, so it stays True."""
  tm = torch_model(3).eval()
  with torch.no_grad():  # part 2 (channel 3) can never win; background wins everywhere
    tm.pixel_classifier.classifier.bias[3] = -1e3
    tm.pixel_classifier.classifier.bias[0] = 1e3
  model = converted(tm)
  x = images(b=2, h=H, w=W, seed=4)
  with torch.no_grad():
    ref = tm(nchw(x))
  out = eval_outputs(model, x)
  compare_outputs(out, ref)
  vis = np.asarray(out['visibility']['parts'])
  assert not vis.any()  # the background wins every pixel
  assert np.asarray(out['visibility']['backg']).all()
  assert np.asarray(out['visibility']['foreg']).all()
  # No part mass: GWAP divides by the clamp 1e-6 and stays finite.
  assert np.isfinite(np.asarray(out['embeddings']['parts'])).all()
  feat = models.embed(model, x)
  np.testing.assert_array_equal(np.asarray(feat['visibility']),
                                np.concatenate([np.ones((2, 1), bool), vis], axis=1))


# ------------------------------------------------------------------------------- train parity
P, K_IMG = 3, 4
LABELS = np.repeat(np.array([5, 2, 0]), K_IMG).astype(np.int32)


def part_masks(n, seed):
  """Softmax(15 m) of random masks at input / 4: ``[N, H/4, W/4, K+1]`` (background first)."""
  m = np.random.RandomState(seed).rand(n, PARTS + 1, H // 4, W // 4).astype(np.float32)
  m = torch.softmax(15 * torch.from_numpy(m), dim=1).numpy()
  return m.transpose(0, 2, 3, 1).copy()


def loss_config():
  return ml_collections.ConfigDict(dict(
      model=bp_config(), input=dict(parts='eight'),
      loss=dict(ce_epsilon=0.1, triplet_margin=0.3, pixel_weight=0.35, pixel_epsilon=0.1,
                visibility_in_training=False,
                weights={n: dict(w) for n, w in bp.DEFAULT_LOSS_WEIGHTS.items()})))


def test_train_outputs_running_stats_loss_and_gradients_match_torch():
  tm = torch_model(5).train()
  model = converted(tm)
  model.train()
  x = images(b=P * K_IMG, h=H, w=W, seed=6)
  masks = part_masks(P * K_IMG, seed=7)
  ref = tm(nchw(x))
  labels = torch.as_tensor(LABELS, dtype=torch.long)
  ref_loss, ref_terms = torch_part_based_loss(ref, labels, nchw(masks))
  ref_loss.backward()
  config = loss_config()
  batch = {'image': jnp.asarray(x), 'label': jnp.asarray(LABELS), 'part_masks': jnp.asarray(masks)}
  method = models.get_method('bpbreid')
  assert method.batch_fields(config) == ('image', 'label', 'part_masks')

  def objective(m):
    objectives, metrics, aux = method.loss(m, batch, extra=None, config=config)
    assert aux is None and set(objectives) == {'loss'}
    return objectives['loss'], metrics

  grads, metrics = nnx.jit(nnx.grad(objective, has_aux=True))(model)
  # The loss's forward updated every BN like torch's train-mode forward (the parts dim-reduce BN
  # over N * K rows).
  keys = assert_running_stats_match(tm, model)
  assert 'parts_after_pooling_dim_reduce.layers.1.running_var' in keys
  assert 'pixel_classifier.bn.running_mean' in keys
  # Loss terms: smooth functions of outputs that agree to ~1e-6 relative.
  np.testing.assert_allclose(float(metrics['loss']), ref_loss.item(), rtol=1e-5)
  for name, value in ref_terms.items():
    np.testing.assert_allclose(float(metrics[name]), value.item(), rtol=1e-5, atol=1e-6,
                               err_msg=name)
  assert ref_terms['triplet_parts'].item() > 0
  flat = {'/'.join(map(str, p)): v for p, v in nnx.to_flat_state(grads)}
  hwio = lambda w: w.transpose(2, 3, 1, 0)  # noqa: E731
  checks = {
      'global_classifier/classifier/kernel': t2n(
          tm.global_identity_classifier.classifier.weight.grad).T,
      'concat_classifier/bn/scale': t2n(tm.concat_parts_identity_classifier.bn.weight.grad),
      'parts_reduce/linear/kernel': t2n(tm.parts_after_pooling_dim_reduce.layers[0].weight.grad).T,
      'parts_reduce/bn/bias': t2n(tm.parts_after_pooling_dim_reduce.layers[1].bias.grad),
      'foreground_reduce/bn/scale': t2n(
          tm.foreground_after_pooling_dim_reduce.layers[1].weight.grad),
      'pixel_classifier/classifier/kernel': hwio(t2n(tm.pixel_classifier.classifier.weight.grad)),
      'pixel_classifier/bn/scale': t2n(tm.pixel_classifier.bn.weight.grad),
      'concat_classifier/classifier/kernel': t2n(
          tm.concat_parts_identity_classifier.classifier.weight.grad).T,
  }
  for path, want in checks.items():
    assert np.abs(want).max() > 0, path
    # Head gradients: sums over <= N * h * w = 384 products of matched quantities; the feature
    # bound. (Backbone gradients through train-mode BNs are ill-conditioned in float32, see
    # tests/test_mpn.py; they are not compared here.)
    assert_close_rel(np.asarray(flat[path][...]), want, err_msg=path)
  # Frozen BN biases get no gradient and the background head is not trained (no GiLt term).
  assert 'global_classifier/bn/bias' not in flat and 'parts_classifiers/0/bn/bias' not in flat
  assert 'pixel_classifier/bn/bias' in flat
  for unused in ('background_classifier/classifier/kernel',
                 'parts_classifiers/2/classifier/kernel'):
    assert np.abs(np.asarray(flat[unused][...])).max() == 0, unused
  # A Linear bias right before a train-mode BN: the BN removes its shift, gradient 0 up to
  # rounding (in both frameworks).
  bias_grad = np.asarray(flat['foreground_reduce/linear/bias'][...])
  assert np.abs(bias_grad).max() < 1e-4 * np.abs(checks['foreground_reduce/bn/scale']).max()


# ------------------------------------------------------------------------------- checkpoints
YACS_MODULE = textwrap.dedent('''
    import os
    MARKER = os.environ['BPBREID_TEST_MARKER']

    def _ran(what):
      with open(MARKER, 'a') as f:
        f.write(what + '\\n')

    class CfgNode(dict):
      """A stand-in for yacs's CfgNode: a dict subclass with instance state (a set, as yacs keeps
      its deprecated keys) and methods that leave a trace when they run."""

      def __init__(self, init=None):
        super().__init__(init or {})
        self.__dict__['__immutable__'] = False
        self.__dict__['__deprecated_keys__'] = {'old.key'}

      def __setstate__(self, state):
        _ran('setstate')
        self.__dict__.update(state)

      def __setitem__(self, key, value):
        _ran('setitem')
        super().__setitem__(key, value)

      def __getattr__(self, name):
        if name.startswith('__'):
          raise AttributeError(name)
        return self[name]
''')


@pytest.fixture
def yacs_stand_in(tmp_path, monkeypatch):
  package = tmp_path / 'fake_site' / 'yacs'
  package.mkdir(parents=True)
  (package / '__init__.py').write_text('')
  (package / 'config.py').write_text(YACS_MODULE)
  marker = tmp_path / 'ran.txt'
  monkeypatch.setenv('BPBREID_TEST_MARKER', str(marker))
  sys.path.insert(0, str(tmp_path / 'fake_site'))
  import yacs.config
  yield yacs.config, marker, str(tmp_path / 'fake_site')
  for name in ('yacs.config', 'yacs'):
    sys.modules.pop(name, None)
  if str(tmp_path / 'fake_site') in sys.path:
    sys.path.remove(str(tmp_path / 'fake_site'))


def official_checkpoint(path, tm, yacs_config):
  """The file ``engine.save_model`` writes: the DataParallel model's state_dict, bookkeeping
  with NumPy scalars (rank-1, mAP from numpy metrics), the yacs config, optimizer and scheduler
  state."""
  node = yacs_config.CfgNode
  cfg = node({'model': node({'name': 'bpbreid', 'bpbreid': node({'pooling': 'gwap'})}),
              'train': node({'lr': 3.5e-4, 'stepsize': [40, 70]})})
  state_dict = {'module.' + k: v for k, v in tm.state_dict().items()}
  optimizer = torch.optim.Adam(tm.parameters(), lr=3.5e-4)
  torch.save({'state_dict': state_dict, 'epoch': 120, 'rank1': np.float32(0.671),
              'mAP': np.float64(0.5625), 'ssmd': np.float64(1.5), 'config': cfg,
              'optimizer': optimizer.state_dict(),
              'scheduler': {'milestones': [40, 70], 'last_epoch': 120, 'base_lrs': [3.5e-4]}},
             path)


@pytest.mark.parametrize('use_torch', [True, False])
def test_official_checkpoint_loads_without_running_pickled_code(tmp_path, yacs_stand_in,
                                                                  use_torch, caplog):
  yacs_config, marker, site = yacs_stand_in
  tm = torch_model(8).eval()
  path = tmp_path / 'job-0_120_model.pth.tar'
  official_checkpoint(path, tm, yacs_config)
  assert not marker.exists()  # saving ran none of the traced methods
  # The class is gone before loading: importing it would fail, running it would leave a trace.
  for name in ('yacs.config', 'yacs'):
    sys.modules.pop(name)
  sys.path.remove(site)
  with caplog.at_level(logging.INFO):
    sd = load_torch_checkpoint(path, use_torch=use_torch)
  assert not marker.exists() and 'yacs' not in sys.modules
  assert all(not k.startswith('module.') for k in sd)
  model = converted_from(sd)
  x = images(b=2, h=H, w=W, seed=9)
  with torch.no_grad():
    ref_feat, _ = torch_test_feature(tm(nchw(x)))
  assert_close_rel(models.embed(model, x)['feat'], t2n(ref_feat))
  # The whole file, as plain data: the config is a dict of dicts, the scalars NumPy scalars.
  from reid_jax.convert import torch_pickle
  raw = torch_pickle.load(str(path))
  assert isinstance(raw['config'], dict) and raw['config']['train']['stepsize'] == [40, 70]
  assert raw['config']['model']['bpbreid'] == {'pooling': 'gwap'}
  assert raw['rank1'] == np.float32(0.671) and raw['rank1'].dtype == np.float32
  assert raw['mAP'] == 0.5625 and raw['epoch'] == 120
  assert not marker.exists()


def converted_from(sd, num_classes=NUM_CLASSES, **kw):
  model = nnx.eval_shape(lambda: models.build_model(bp_config(), num_classes))
  report = load_torch_weights(model, sd, **kw)
  assert report.unused == [PREFIX + 'classifier.bias', PREFIX + 'classifier.weight']
  return model


def test_checkpoint_of_another_dataset_loads_for_testing(caplog):
  tm = torch_model(10, num_classes=9).eval()
  sd = numpy_state_dict(tm)
  # An abstract model (a random init costs ~20 s of eager dispatch here): what loading leaves
  # untouched stays abstract, which shows exactly what was skipped.
  model = nnx.eval_shape(lambda: models.build_model(bp_config(), NUM_CLASSES))
  with pytest.raises(ValueError, match='skip_mismatched_classifiers'):
    load_torch_weights(model, sd)
  with caplog.at_level(logging.WARNING):
    report = load_torch_weights(model, sd, skip_mismatched_classifiers=True)
  assert len(report.skipped) == 4 + PARTS and report.skipped == sorted(report.skipped)
  assert 'parts_identity_classifier.3.classifier.weight' in caplog.text
  targets = keymaps.keymap_for(model)
  for key, target in targets.items():
    value = target.variable.get_value()
    assert isinstance(value, jax.ShapeDtypeStruct) == (key in report.skipped), key
    if key in report.skipped:  # the test feature never reads the identity classifiers
      target.variable.set_value(jnp.zeros(value.shape, value.dtype))
  x = images(b=2, h=H, w=W, seed=11)
  with torch.no_grad():
    ref_feat, ref_vis = torch_test_feature(tm(nchw(x)))
  got = models.embed(model, x)
  assert_close_rel(got['feat'], t2n(ref_feat))
  np.testing.assert_array_equal(np.asarray(got['visibility']), t2n(ref_vis))


# ------------------------------------------------------------------------------- loss pieces
def test_part_averaged_triplet_hand_values():
  # One part (K = 1), 1-D embeddings 0, 1, 3 (id 0) and 4, 10 (id 1):
  # anchor 0: hardest positive 3, hardest negative 4 -> relu(3 - 4 + .3) = 0;
  # anchor 1: pos 2, neg 3 -> 0; anchor 3: pos 3, neg 1 -> 2.3; anchor 4: pos 6, neg 1 -> 5.3;
  # anchor 10: pos 6, neg 7 -> 0. Mean over 5 anchors: 7.6 / 5.
  e = jnp.asarray([[0.], [1.], [3.], [4.], [10.]])[:, None, :]
  labels = jnp.asarray([0, 0, 0, 1, 1])
  loss, info = bp.part_averaged_triplet_loss(e, labels, 0.3)
  np.testing.assert_allclose(float(loss), 7.6 / 5, rtol=1e-6)
  np.testing.assert_allclose(float(info['trivial_triplets']), 3 / 5)
  # Two parts: distances averaged before mining. Part 2 doubles every distance of part 1 (x2),
  # so the mean is 1.5 x part 1: anchor 3: 4.5 - 1.5 + .3 = 3.3; anchor 4: 9 - 1.5 + .3 = 7.8;
  # anchor 1: 3 - 4.5 + .3 < 0; others 0.
  e2 = jnp.concatenate([e, 2 * e], axis=1)
  loss, _ = bp.part_averaged_triplet_loss(e2, labels, 0.3)
  np.testing.assert_allclose(float(loss), (3.3 + 7.8) / 5, rtol=1e-6)
  # A singleton identity has no positive: no triplet for it; the anchor itself is never its own
  # positive (BoT's triplet would count d(a, a) = 0).
  loss, info = bp.part_averaged_triplet_loss(e, jnp.asarray([0, 0, 0, 1, 2]), 0.3)
  # anchor 0: 3 - 4 -> 0; anchor 1: 2 - 3 -> 0; anchor 3: 3 - 1 + .3 = 2.3 (anchors 4, 10 none).
  np.testing.assert_allclose(float(loss), 2.3 / 3, rtol=1e-6)
  np.testing.assert_allclose(float(info['valid_triplets']), 3 / 5)


def test_part_averaged_triplet_with_visibility():
  # Part 0 visible everywhere, part 1 visible only for images 0 and 1.
  e = jnp.asarray([[[0.], [0.]], [[1.], [5.]], [[3.], [0.]], [[4.], [9.]]])
  vis = jnp.asarray([[True, True], [True, True], [True, False], [True, False]])
  labels = jnp.asarray([0, 0, 1, 1])
  # Pair (0, 1) averages both parts: (1 + 5) / 2 = 3; pairs with 2 or 3 use part 0 only.
  # d = [[0, 3, 3, 4], [3, 0, 2, 3], [3, 2, 0, 1], [4, 3, 1, 0]]
  # anchor 0: pos 3, neg 3 -> .3; anchor 1: pos 3, neg 2 -> 1.3; anchor 2: pos 1, neg 2 -> 0;
  # anchor 3: pos 1, neg 3 -> 0.
  loss, _ = bp.part_averaged_triplet_loss(e, labels, 0.3, vis)
  np.testing.assert_allclose(float(loss), (0.3 + 1.3) / 4, rtol=1e-6)
  # No common visible part: the pair is ignored (-1); an anchor with no valid positive is dropped.
  vis = jnp.asarray([[True, False], [False, True], [True, False], [False, True]])
  # Valid pairs: (0, 2) part 0: 3; (1, 3) part 1: 4. Anchors have no valid positive -> loss 0.
  loss, info = bp.part_averaged_triplet_loss(e, labels, 0.3, vis)
  assert float(loss) == 0 and float(info['valid_triplets']) == 0
  # Continuous visibility weights each part by sqrt(v_i v_j).
  v = jnp.asarray([[1., .25], [1., 1.], [1., 0.], [1., 0.]])
  d = np.asarray(bp.masked_mean_distance(bp.part_pairwise_distances(e),
                                         jnp.sqrt(v.T[:, None, :] * v.T[:, :, None])))
  np.testing.assert_allclose(d[0, 1], (1 * 1 + 0.5 * 5) / 1.5, rtol=1e-6)


def test_part_distances_are_zero_with_zero_gradient_for_identical_embeddings():
  e = jnp.asarray([[[1., 2.]], [[1., 2.]], [[4., 6.]]])
  d = bp.part_pairwise_distances(e)
  np.testing.assert_allclose(np.asarray(d[0]), [[0, 0, 5], [0, 0, 5], [5, 5, 0]], atol=1e-6)
  g = jax.grad(lambda e: bp.part_pairwise_distances(e)[0, 0, 1])(e)
  assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).max()) == 0


def test_weighted_cross_entropy_selects_or_weights_rows():
  logits = jnp.asarray(np.random.RandomState(0).randn(4, 5), jnp.float32)
  labels = jnp.asarray([0, 3, 1, 1])
  from reid_jax import losses
  per_row = [float(losses.cross_entropy_label_smooth(logits[i:i + 1], labels[i:i + 1], 0.1))
             for i in range(4)]
  sel = jnp.asarray([True, False, True, False])
  np.testing.assert_allclose(float(bp.weighted_cross_entropy(logits, labels, 0.1, sel)),
                             (per_row[0] + per_row[2]) / 2, rtol=1e-6)
  w = jnp.asarray([1., 0., 3., 0.])
  np.testing.assert_allclose(float(bp.weighted_cross_entropy(logits, labels, 0.1, w)),
                             (per_row[0] + 3 * per_row[2]) / 4, rtol=1e-6)


def test_pixel_targets_resize_and_first_index_on_ties():
  m = np.zeros((1, 4, 4, 3), np.float32)
  m[0, :2, :, 1] = 1.0      # part 1 on the top half
  m[0, 2:, :, 2] = 1.0      # part 2 on the bottom half
  m[0, 0, 0] = [0.5, 0.5, 0.0]  # a tie: the background (first index) wins
  t = np.asarray(bp.pixel_targets(jnp.asarray(m), (4, 4)))
  want = np.array([[0, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
  np.testing.assert_array_equal(t[0], want)
  # align_corners resize 4 -> 2 rows/cols samples rows 0 and 3 exactly (coordinates 0 and 3).
  t2 = np.asarray(bp.pixel_targets(jnp.asarray(m), (2, 2)))
  np.testing.assert_array_equal(t2[0], [[0, 1], [2, 2]])


def test_batch_fields_need_the_part_grouping():
  config = loss_config()
  config.input.parts = None
  with pytest.raises(ValueError, match='config.input.parts'):
    bp.bpbreid_batch_fields(config)


def test_wrong_part_count_is_named():
  model = nnx.eval_shape(lambda: models.build_model(bp_config(), NUM_CLASSES))
  config = loss_config()
  batch = {'image': jnp.zeros((4, H, W, 3)), 'label': jnp.asarray([0, 0, 1, 1]),
           'part_masks': jnp.zeros((4, H // 4, W // 4, PARTS + 3))}
  with pytest.raises(ValueError, match='config.model.parts'):  # raised while tracing
    nnx.eval_shape(lambda m: bp.part_based_loss(m, batch, extra=None, config=config), model)


def test_bad_options_are_named():
  with pytest.raises(ValueError, match='test_embeddings'):
    nnx.eval_shape(lambda: models.build_model(bp_config(test_embeddings=('bn_conct',)), 3))
  with pytest.raises(ValueError, match='config.model.backbone'):
    nnx.eval_shape(lambda: models.build_model(bp_config(backbone='vgg'), 3))


def test_other_globals_next_to_a_config_are_still_refused(tmp_path, yacs_stand_in):
  import os
  from reid_jax.convert import UnsafeCheckpointError
  yacs_config, marker, _ = yacs_stand_in
  path = tmp_path / 'evil.pth.tar'
  torch.save({'state_dict': {'w': torch.zeros(2)}, 'config': yacs_config.CfgNode({'a': 1}),
              'hook': os.system}, path)
  with pytest.raises(UnsafeCheckpointError, match='system'):
    load_torch_checkpoint(path, use_torch=False)
  with pytest.raises(UnsafeCheckpointError, match='system'):
    load_torch_checkpoint(path, use_torch=True)
  assert not marker.exists()


# ------------------------------------------------------------------------------- pictures
def test_part_masks_tile_colours_parts_and_marks_visibility():
  from reid_jax.evaluation import visualize
  image = np.zeros((16, 8, 3), np.uint8)
  masks = np.zeros((4, 2, 3), np.float32)
  masks[:2, :, 0] = 1.0          # part 0 covers the top half, certainly
  tile = visualize.part_masks_tile(image, masks, np.array([True, False, True]), size=(16, 8),
                                   alpha=0.5)
  a = np.asarray(tile)
  assert a.shape[1] == 8 and a.shape[0] > 16
  # Top-left pixel: half of part 0's colour over black; bottom rows: untouched black.
  np.testing.assert_allclose(a[0, 0], np.asarray(visualize.PART_COLOURS[0]) * 0.5, atol=1)
  assert a[15, 0].max() == 0
  strip = a[16:]
  cell = max(min(8 // 3, 12), 4)
  centre = lambda j: strip[1 + cell // 2, j * cell + 1 + cell // 2 - 1]  # noqa: E731
  np.testing.assert_array_equal(centre(0), visualize.PART_COLOURS[0])   # visible: filled
  np.testing.assert_array_equal(centre(1), visualize.WHITE)             # invisible: outline only


def test_pictures_hook_writes_ranked_lists_with_part_masks(tmp_path):
  tm = torch_model(12).eval()
  model = converted(tm)
  model.train()
  config = ml_collections.ConfigDict(dict(
      input=dict(size=(H, W), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
      eval=dict(normalize=True, metric='euclidean', part_combine='mean')))
  batch = {'image': images(b=P * K_IMG, h=H, w=W, seed=13), 'label': LABELS,
           'part_masks': part_masks(P * K_IMG, seed=14)}
  paths = models.get_method('bpbreid').pictures(model, batch, config, str(tmp_path), count=2,
                                                topk=3)
  assert [p.rsplit('/', 1)[1] for p in paths] == ['parts_rank_0000.png', 'parts_rank_0001.png']
  from PIL import Image
  with Image.open(paths[0]) as im:
    assert im.width > 4 * W and im.height > H
  assert model.use_running_average is False  # the caller's module keeps its mode


# ------------------------------------------------------------------------------- HRNet backbone
def torch_hrnet(**kw):
  hr = pytest.importorskip('tests.torch_reference_hrnet')
  pytest.importorskip('reid_jax.models.hrnet')
  backbone = hr.TorchHRNet(**kw)
  backbone.out_features = 60 * kw.get('width', 32)  # 4 * (w + 2w + 4w + 8w) concatenated
  return backbone


def test_hrnet_w32_layout_is_the_official_2040_entries():
  tm = TorchBPBreID(torch_hrnet(), 702, parts=8, dim=512)
  sd = tm.state_dict()
  assert len(sd) == 2040
  cfg = bp_config(backbone='hrnet', parts=8, dim=512)
  model = nnx.eval_shape(lambda: models.build_model(cfg, 702))
  mapped = keymaps.keymap_for(model)
  assert sorted(mapped) == sorted(k for k in sd if not k.endswith('num_batches_tracked'))
  assert PREFIX + 'cls_head.0.bias' in mapped and PREFIX + 'stage4.2.fuse_layers.3.0.2.0.weight' \
      in mapped


def test_narrow_hrnet_eval_parity():
  narrow = dict(width=4, stage_modules=(1, 1, 1), blocks=1, stem_width=8)
  tm = randomize_(TorchBPBreID(torch_hrnet(**narrow), NUM_CLASSES, parts=PARTS, dim=DIM),
                  seed=15).eval()
  cfg = bp_config(backbone='hrnet', hrnet_width=4, hrnet_stage_modules=(1, 1, 1), hrnet_blocks=1,
                  hrnet_stem_width=8)
  model = nnx.eval_shape(lambda: models.build_model(cfg, NUM_CLASSES))
  report = load_torch_weights(model, numpy_state_dict(tm))
  assert report.unused == []
  x = images(b=2, h=H, w=W, seed=16)
  with torch.no_grad():
    ref = tm(nchw(x))
  out = eval_outputs(model, x)
  assert out['pixel_scores'].shape == (2, H // 4, W // 4, PARTS + 1)
  compare_outputs(out, ref)
