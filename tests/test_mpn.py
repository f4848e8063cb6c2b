"""MPN: parity with a PyTorch reference written from the architecture (tests/torch_reference_mpn.py)
in eval and train mode, the training loss and its gradient against the official objective in
torch, checkpoint import (the official ``TS`` layout, other datasets' classifiers, channel
attention, the IDE snapshot), and golden values of the MPN losses.

Parity bound (as tests/torch_reference.py): max |diff| <= 1e-4 * max |reference| in float32, with
random weights and BN statistics; scalar losses within 1e-5 relative (see each test).
"""

import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from flax import nnx

from reid_jax import checkpoint, models
from reid_jax.convert import keymaps, load_backbone, load_torch_checkpoint, load_torch_weights
from reid_jax.models import mpn as mpn_lib
from tests.torch_reference import (assert_close_rel, assert_embeds_like,
                                   assert_running_stats_match, images, nchw, numpy_state_dict,
                                   randomize_)
from tests.torch_reference_mpn import TorchFtNet, TorchMPN, torch_mpn_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NARROW = dict(depth=18, width=16)   # 128-channel feature map
CH = 32                             # narrow part features


def mpn_config(**kw):
  base = dict(name='mpn', depth=50, width=64, stem_relu=True, last_stride=1, parts=6,
              part_channels=512, prior='stripes', channel_attention=False)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def narrow_config(**kw):
  return mpn_config(**NARROW, part_channels=CH, **kw)


def narrow_torch(num_classes, seed, ca=False):
  return randomize_(TorchMPN(num_classes, channels=CH, ca=ca, **NARROW), seed=seed)


def abstract_model(cfg, num_classes):
  return nnx.eval_shape(lambda: models.build_model(cfg, num_classes))


def converted(tm, cfg, num_classes):
  model = abstract_model(cfg, num_classes)
  report = load_torch_weights(model, numpy_state_dict(tm))
  assert report.unused == []
  return model


# ------------------------------------------------------------------------------- reference sanity
def test_reference_layout_matches_the_official_key_counts():
  # The official TS (K = 6, C = 751) has 426 state_dict entries; the IDE snapshot 327.
  sd = TorchMPN(751).state_dict()
  assert len(sd) == 426
  assert 'base.7.2.conv1.weight' in sd and 'base.1.running_var' in sd
  assert 'local_conv_list2.5.1.running_mean' in sd and 'Tfc_list.5.bias' in sd
  assert not any(k.startswith(('base.2.', 'base.3.')) for k in sd)
  ide = TorchFtNet(751).state_dict()
  assert len(ide) == 327 and 'model.fc.1.running_var' in ide and 'classifier.0.bias' in ide
  # Our key map names every entry but the 65 num_batches_tracked counters.
  model = abstract_model(mpn_config(), 751)
  assert sorted(keymaps.keymap_for(model)) == sorted(
      k for k in sd if not k.endswith('num_batches_tracked'))


# ------------------------------------------------------------------------------- eval parity
def test_resnet50_384x128_state_dict_file_embeds_like_torch(tmp_path):
  """The official setting at the real size, through a torch.save'd ``net_{epoch}.pth``."""
  tm = randomize_(TorchMPN(751), seed=1).eval()
  path = tmp_path / 'net_69.pth'
  torch.save(tm.state_dict(), path)
  sd = load_torch_checkpoint(path)
  model = abstract_model(mpn_config(), 751)
  report = load_torch_weights(model, sd)
  assert report.unused == [] and len(report.loaded) == 426 - 65
  got = assert_embeds_like(model, tm, images(b=2, h=384, w=128, seed=2))
  assert got.shape == (2, 3072)


@pytest.mark.parametrize('ca', [False, True])
def test_narrow_eval_parity(ca):
  tm = narrow_torch(9, seed=3 + ca, ca=ca).eval()
  model = converted(tm, narrow_config(channel_attention=ca), 9)
  got = assert_embeds_like(model, tm, images(b=2, h=192, w=64, seed=5))
  assert got.shape == (2, 6 * CH)


# ------------------------------------------------------------------------------- train parity
P, K = 3, 4
LABELS = np.repeat(np.array([5, 2, 7]), K).astype(np.int32)  # contiguous groups of K


@pytest.mark.parametrize('ca', [False, True])
def test_train_mode_outputs_and_running_stats_match_torch(ca):
  # 224x64 -> a 14x4 map: stripes of int(14 / 6) = 2 rows, rows 12 and 13 in no stripe.
  tm = narrow_torch(10, seed=6 + ca, ca=ca).train()
  model = converted(tm, narrow_config(channel_attention=ca), 10)
  model.train()
  x = images(b=P * K, h=224, w=64, seed=8)
  mt, mt_logits, at, at_logits = tm(nchw(x))
  out = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(x))
  as_np = lambda ts: np.stack([t.detach().numpy() for t in ts], axis=1)  # noqa: E731
  for name, ref in (('mt_feat', mt), ('mt_logits', mt_logits), ('at_feat', at),
                    ('at_logits', at_logits)):
    assert out[name].shape == (P * K, 6, CH if 'feat' in name else 10), name
    assert_close_rel(out[name], as_np(ref))
  # Every BN, including local_conv_list*.1 (updated twice: MT then AT) and the attention's.
  keys = assert_running_stats_match(tm, model)
  assert 'local_conv_list.3.1.running_var' in keys and 'local_conv_list2.0.1.running_mean' in keys
  assert ('ca_list.2.channel_attn.conv2.bn.running_var' in keys) == ca
  assert len(keys) == 2 * (20 + 12 + (12 if ca else 0))


# ------------------------------------------------------------------------------- loss and gradient
def loss_config():
  return ml_collections.ConfigDict(dict(
      model=narrow_config(),
      loss=dict(ce_epsilon=0.0, triplet_margin=0.4, mt_weight=1.0, at_weight=1.0,
                align_weight=1.0, triplet_weight=1.0)))


def mpn_objective(config, batch):
  method = models.get_method('mpn')

  def objective(m):
    objectives, metrics, aux = method.loss(m, batch, extra=None, config=config)
    assert aux is None and set(objectives) == {'loss'}
    return objectives['loss'], metrics
  return objective


def test_mpn_loss_and_gradient_match_the_official_objective_in_torch():
  tm = narrow_torch(10, seed=9).train()
  config = loss_config()
  model = converted(tm, config.model, 10)
  model.train()
  x = images(b=P * K, h=192, w=64, seed=10)
  labels = torch.as_tensor(LABELS, dtype=torch.long)
  ref, ref_parts = torch_mpn_loss(*tm(nchw(x)), labels, P, K, margin=0.4)
  ref.backward()
  batch = {'image': jnp.asarray(x), 'label': jnp.asarray(LABELS)}
  grads, metrics = nnx.jit(nnx.grad(mpn_objective(config, batch), has_aux=True))(model)
  # Each term is a smooth function of features that agree to ~1e-6 relative; 1e-5 relative
  # (absolute for the O(1) alignment and triplet terms) leaves a margin of ~10.
  np.testing.assert_allclose(float(metrics['loss']), ref.item(), rtol=1e-5)
  for name, value in ref_parts.items():
    np.testing.assert_allclose(float(metrics[name]), value.item(), rtol=1e-5, atol=1e-5,
                               err_msg=name)
  assert ref_parts['triplet'].item() > 0 and ref_parts['align'].item() > 0  # both terms act
  # Head gradients (classifiers, both 1x1 conv blocks of every part; the AT passes through the
  # stripe-masked BN): sums over <= B * h * w = 576 products of matched quantities, measured
  # ~1e-5 relative; the feature bound. The backbone's float32 gradient is checked below in
  # float64 instead: through its train-mode BNs it is ill-conditioned (every BN backward output
  # sums to ~0 over the batch, and the next weight gradient multiplies it by positive
  # activations), so XLA:CPU's float32 sums leave ~2e-3 relative error at layer4 (PyTorch's
  # blocked sums ~4e-6; both against float64), an accuracy limit rather than a semantic one.
  flat = {'/'.join(map(str, p)): v for p, v in nnx.to_flat_state(grads)}
  to_hwio = lambda w: w.transpose(2, 3, 1, 0)  # noqa: E731
  checks = {'mt_classifiers/2/kernel': tm.Sfc_list[2].weight.grad.numpy().T,
            'at_classifiers/4/bias': tm.Tfc_list[4].bias.grad.numpy(),
            'local_conv2/5/bn/scale': tm.local_conv_list2[5][1].weight.grad.numpy()}
  for k in range(6):
    checks[f'local_conv/{k}/conv/kernel'] = to_hwio(tm.local_conv_list[k][0].weight.grad.numpy())
    checks[f'local_conv2/{k}/bn/bias'] = tm.local_conv_list2[k][1].bias.grad.numpy()
  for path, ref_grad in checks.items():
    assert np.abs(ref_grad).max() > 0, path
    assert_close_rel(np.asarray(flat[path][...]), ref_grad)


def test_every_gradient_matches_torch_in_float64():
  """The whole backward pass (backbone included) in float64 on both sides: every parameter's
  gradient. reid_jax keeps BN
  statistics and the MPN loss terms in float32 by design, which bounds the agreement at ~1e-6
  relative (measured); the feature bound 1e-4 then has a wide margin."""
  # Three parts (stripes of 4 rows) keep the compile short.
  tm = randomize_(TorchMPN(6, parts=3, channels=16, depth=18, width=8), seed=19).train()
  config = loss_config()
  config.model.update(width=8, part_channels=16, parts=3)
  model = converted(tm, config.model, 6)
  model.train()
  x = images(b=P * K, h=192, w=32, seed=20)
  labels = np.array([0, 0, 0, 0, 3, 3, 3, 3, 1, 1, 1, 1], np.int32)
  tm = tm.double()
  out = tm(nchw(x).double())
  torch_mpn_loss(*out, torch.as_tensor(labels, dtype=torch.long), P, K)[0].backward()
  with jax.enable_x64(True):
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda v: v.astype(jnp.float64), state)
    batch = {'image': jnp.asarray(x, jnp.float64), 'label': jnp.asarray(labels)}
    objective = mpn_objective(config, batch)
    grads, _ = jax.jit(jax.grad(lambda s: objective(nnx.merge(graphdef, s)), has_aux=True))(
        state)
    grad_model = nnx.merge(graphdef, grads)  # the key map then points at the gradients
    torch_params = dict(tm.named_parameters())
    scale = max(p.grad.abs().max().item() for p in torch_params.values())
    compared = 0
    for key, target in keymaps.keymap_for(grad_model).items():
      if key not in torch_params:
        continue  # running statistics
      ref = torch_params[key].grad.numpy()
      ref = {keymaps.CONV: lambda w: w.transpose(2, 3, 1, 0),
             keymaps.LINEAR: lambda w: w.T}.get(target.kind, lambda w: w)(ref)
      got = np.asarray(target.variable[...])
      if np.abs(ref).max() < 1e-6 * scale:
        # A bias whose shift a later train-mode BN removes (a conv bias before its BN; the
        # local_conv BN bias, whose shift survives the max pool and meets local_conv2's BN):
        # its gradient is 0 up to rounding.
        assert key.endswith('bias') and np.abs(got).max() < 1e-4 * scale, key
      else:
        assert_close_rel(got, ref)
      compared += 1
  assert compared == len(torch_params)


# ------------------------------------------------------------------------------- checkpoint import
def test_other_dataset_classifiers_are_skipped_and_reported(caplog):
  """test.py builds TS(num_classes=751) whatever the training set: a checkpoint with other
  classifier rows loads for testing, its classifiers left at init and reported."""
  tm = narrow_torch(7, seed=11).eval()
  sd = numpy_state_dict(tm)
  model = models.build_model(narrow_config(), 5)
  init = np.asarray(model.mt_classifiers[3].kernel[...]).copy()
  with pytest.raises(ValueError, match=r"'Sfc_list\.0\.weight'.*skip_mismatched_classifiers"):
    load_torch_weights(model, sd)
  with caplog.at_level(logging.WARNING):
    report = load_torch_weights(model, sd, skip_mismatched_classifiers=True)
  fcs = sorted(f'{n}.{k}.{w}' for n in ('Sfc_list', 'Tfc_list') for k in range(6)
               for w in ('weight', 'bias'))
  assert report.skipped == fcs and report.excluded == fcs and report.unused == []
  assert not set(fcs) & set(report.loaded)
  assert 'Tfc_list.5.bias' in caplog.text and 'skip_mismatched_classifiers' in caplog.text
  np.testing.assert_array_equal(np.asarray(model.mt_classifiers[3].kernel[...]), init)
  assert_embeds_like(model, tm, images(b=2, h=192, w=64, seed=12))
  # A mis-shaped non-classifier key is still an error.
  sd['local_conv_list.2.0.bias'] = np.zeros(CH + 1, np.float32)
  with pytest.raises(ValueError, match=r"'local_conv_list\.2\.0\.bias'"):
    load_torch_weights(model, sd, skip_mismatched_classifiers=True)


def test_official_checkpoint_into_a_channel_attention_model_names_the_missing_keys():
  sd = numpy_state_dict(narrow_torch(4, seed=13))
  model = abstract_model(narrow_config(channel_attention=True), 4)
  with pytest.raises(KeyError, match=r'ca_list\.0\.channel_attn\.conv1\.bn\.bias.*'
                                     r'channel_attention=False'):
    load_torch_weights(model, sd)
  # Keeping the attention at its init on purpose.
  model = models.build_model(narrow_config(channel_attention=True), 4)
  report = load_torch_weights(model, sd, exclude=['ca_list.*'])
  assert len(report.excluded) == 6 * 12 and report.unused == []


def ide_snapshot(num_classes, seed):
  return randomize_(TorchFtNet(num_classes, bottleneck=24, **NARROW), seed=seed)


def test_ide_snapshot_initialises_the_backbone_exactly():
  ide = ide_snapshot(751, seed=14)
  sd = numpy_state_dict(ide)
  model = models.build_model(narrow_config(), 6)
  heads_before = {p: np.asarray(v[...]).copy()
                  for p, v in nnx.to_flat_state(nnx.state(model)) if p[0] != 'base'}
  report = load_backbone(model, sd)
  assert report.unused == sorted(['model.fc.0.weight', 'model.fc.0.bias', 'model.fc.1.weight',
                                  'model.fc.1.bias', 'model.fc.1.running_mean',
                                  'model.fc.1.running_var', 'classifier.0.weight',
                                  'classifier.0.bias'])
  torch_base = dict(ide.model.named_parameters(), **dict(ide.model.named_buffers()))
  targets = keymaps.resnet_keys(model.base)
  assert sorted(report.loaded) == sorted('model.' + k for k in targets)
  for key, target in targets.items():
    value = torch_base[key].detach().numpy()
    expected = value.transpose(2, 3, 1, 0) if target.kind == keymaps.CONV else value
    np.testing.assert_array_equal(np.asarray(target.variable[...]), expected, err_msg=key)
  for path, value in nnx.to_flat_state(nnx.state(model)):
    if path[0] != 'base':
      np.testing.assert_array_equal(np.asarray(value[...]), heads_before[path], err_msg=path)
  # The same through load_torch_weights with the prefix spelled out.
  again = load_torch_weights(model.base, sd, prefix='model.')
  assert again.loaded == report.loaded and again.unused == report.unused


def test_convert_cli_backbone_only(tmp_path):
  cfg_file = tmp_path / 'narrow_mpn.py'
  cfg_file.write_text(
      'from reid_jax import config_lib\n'
      'def get_config(arg=None):\n'
      '  c = config_lib.base_config()\n'
      "  c.model = config_lib.model_config('mpn')\n"
      f'  c.model.update(depth=18, width=16, parts=6, part_channels={CH}, prior="stripes",\n'
      '                 channel_attention=False)\n'
      '  return c\n')
  ide = ide_snapshot(751, seed=15)
  torch.save(ide.state_dict(), tmp_path / '1501.pth')
  out = tmp_path / 'ide'
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  proc = subprocess.run([sys.executable, '-m', 'reid_jax.convert', f'--config={cfg_file}',
                         f'--torch_checkpoint={tmp_path / "1501.pth"}', f'--out={out}',
                         '--backbone_only', '--num_classes=11'],
                        env=env, cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'model.fc.0.weight' in proc.stdout  # reported unused
  assert checkpoint.read_meta(str(out))['num_classes'] == 11
  model = checkpoint.restore_model(mpn_config(**NARROW, part_channels=CH), str(out))
  np.testing.assert_array_equal(np.asarray(model.base.layer3[1].conv2.kernel[...]),
                                ide.model.layer3[1].conv2.weight.detach().numpy().transpose(
                                    2, 3, 1, 0))
  np.testing.assert_array_equal(np.asarray(model.base.bn1.var[...]),
                                ide.model.bn1.running_var.numpy())


def test_class_count_is_read_from_the_first_mt_classifier():
  from reid_jax.convert.__main__ import classifier_rows
  sd = {'Sfc_list.0.weight': np.zeros((702, CH), np.float32)}
  assert classifier_rows(sd, narrow_config()) == 702
  with pytest.raises(KeyError, match=r"'Sfc_list\.0\.weight'.*--num_classes"):
    classifier_rows({'base.0.weight': np.zeros(1)}, narrow_config())


def test_masked_max_pool_routes_the_gradient_to_the_first_maximum():
  # F.max_pool2d semantics: the value at the first maximal position (row-major) among the masked
  # ones, all of the gradient there, even on ties (jnp.max would split it).
  x = np.zeros((1, 2, 3, 2), np.float32)
  x[0, 0, 1, 0] = x[0, 1, 2, 0] = 5.0       # channel 0: a tie
  x[0, 0, 0, 1], x[0, 1, 1, 1] = 9.0, 4.0   # channel 1: its maximum is masked out
  mask = np.ones((1, 2, 3), bool)
  mask[0, 0, 0] = False
  value, grad = jax.value_and_grad(
      lambda x: jnp.sum(mpn_lib.masked_max_pool(x, jnp.asarray(mask)) * jnp.asarray([1., 2.])))(
          jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(mpn_lib.masked_max_pool(jnp.asarray(x),
                                                                   jnp.asarray(mask))), [[5, 4]])
  expected = np.zeros_like(x)
  expected[0, 0, 1, 0], expected[0, 1, 1, 1] = 1.0, 2.0
  np.testing.assert_array_equal(np.asarray(grad), expected)
  assert float(value) == 13.0


# ------------------------------------------------------------------------------- the losses alone
def test_class_alignment_loss_hand_values():
  # Identities (label order irrelevant): 3 -> mean S (1, 1), mean T (1, 1): 1 - cos = 0;
  # 0 -> S (1, 0), T (0, 2): 1; 4 -> S (3, 4), T (-3, -4): 2; 1 -> S (0, 0): cos = 0, so 1.
  s = np.array([[1, 0], [1, 2], [1, 0], [1, 0], [3, 4], [1, -1], [-1, 1]], np.float32)
  t = np.array([[2, 0], [0, 2], [0, 1], [0, 3], [-3, -4], [5, 5], [0, 1]], np.float32)
  labels = np.array([3, 3, 0, 0, 4, 1, 1])
  got = mpn_lib.class_alignment_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(labels), 9)
  np.testing.assert_allclose(float(got), (0 + 1 + 2 + 1) / 4, rtol=1e-6)


def test_mpn_triplet_loss_hand_values_and_gradient():
  # Squared distances: d01 = 1, d02 = .25, d03 = 1, d12 = 1.25, d13 = 2, d23 = .25, f4 far away.
  # Anchor 0: hardest positive 1 (d 1), hardest negative 2 (.25): 1 - .25 + .4 = 1.15, kept;
  # anchor 1: 1 - 1.25 + .4 = .15, kept; anchor 2: positive 3 (.25), negative 0 (.25): .4, kept;
  # anchor 3: positive 2 (.25), negative 0 (1): -.35, dropped; anchor 4: no positive.
  f = np.array([[0, 0], [1, 0], [0, .5], [0, 1], [3, 3]], np.float32)
  labels = jnp.asarray([0, 0, 1, 1, 2])
  loss, grad = jax.value_and_grad(lambda f: mpn_lib.mpn_triplet_loss(f, labels, 0.4))(
      jnp.asarray(f))
  np.testing.assert_allclose(float(loss), (1.15 + .15 + .4) / 3, rtol=1e-6)
  # d/df0 of (d01 - d02 + d10 - d12 + d23 - d20) / 3 = (2(f2 - f1) + 2(f0 - f1) - 2(f0 - f2)) / 3
  expected = np.zeros_like(f)
  expected[0] = (2 * (f[2] - f[1]) + 2 * (f[0] - f[1]) - 2 * (f[0] - f[2])) / 3
  expected[1] = (-2 * (f[0] - f[1]) + 2 * (f[1] - f[0]) - 2 * (f[1] - f[2])) / 3
  expected[2] = (2 * (f[0] - f[2]) + 2 * (f[1] - f[2]) + 2 * (f[2] - f[3]) - 2 * (f[2] - f[0])) / 3
  expected[3] = -2 * (f[2] - f[3]) / 3
  np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-6, atol=1e-7)


def test_mpn_triplet_loss_fallback_and_degenerate_batches():
  # No anchor violates the margin: the official fallback triplet (last anchor with a positive,
  # its first negative) has relu(d_ap - d_an' + m) <= relu(d_ap - d_an + m) = 0: loss 0, no
  # gradient, nothing undefined.
  f = jnp.asarray([[0, 0], [.1, 0], [5, 0], [5.1, 0]], jnp.float32)
  labels = jnp.asarray([1, 1, 0, 0])
  loss, grad = jax.value_and_grad(lambda f: mpn_lib.mpn_triplet_loss(f, labels, 0.4))(f)
  assert float(loss) == 0 and np.all(np.asarray(grad) == 0)
  # No anchor has a positive: 0 (the official code has no triplet to fall back on).
  assert float(mpn_lib.mpn_triplet_loss(f, jnp.asarray([0, 1, 2, 3]), 0.4)) == 0
  # Identities of 2 and 3 images, every anchor violating (d = squared distance):
  # anchor 0: d_ap d01 = 1, d_an d02 = .04: 1.36; anchor 1: 1 - d12 (.64) + .4 = .76;
  # anchor 2: positives d23 = 23.04, d24 = 24.01 -> 24.01, negative d20 = .04: 24.37;
  # anchor 3: d32 = 23.04, negative d31 = 16: 7.44; anchor 4: d42 = 24.01, d41 = 16.81: 7.6.
  f = jnp.asarray([[0, 0], [1, 0], [.2, 0], [5, 0], [5.1, 0]], jnp.float32)
  labels = jnp.asarray([0, 0, 1, 1, 1])
  expected = (1.36 + .76 + 24.37 + 7.44 + 7.6) / 5
  np.testing.assert_allclose(float(mpn_lib.mpn_triplet_loss(f, labels, 0.4)), expected,
                             rtol=1e-5)


def test_loss_helpers_match_the_torch_objective_on_random_features():
  """Alignment and triplet on random features (no network) against the official objective."""
  rng = np.random.RandomState(18)
  s = torch.as_tensor(rng.randn(P * K, 6, 8).astype(np.float32))
  t = torch.as_tensor(rng.randn(P * K, 6, 8).astype(np.float32))
  labels = torch.as_tensor(LABELS, dtype=torch.long)
  logits = [torch.zeros(P * K, 10)] * 6
  _, parts = torch_mpn_loss(list(s.unbind(1)), logits, list(t.unbind(1)), logits, labels, P, K)
  sj, tj = jnp.asarray(s.numpy()).reshape(P * K, -1), jnp.asarray(t.numpy()).reshape(P * K, -1)
  align = mpn_lib.class_alignment_loss(sj, tj, jnp.asarray(LABELS), 10)
  tri = mpn_lib.mpn_triplet_loss(mpn_lib.l2_normalize(sj), jnp.asarray(LABELS), 0.4)
  np.testing.assert_allclose(float(align), float(parts['align']), rtol=1e-5)
  np.testing.assert_allclose(float(tri), float(parts['triplet']), rtol=1e-5)
