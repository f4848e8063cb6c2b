"""APNet (Chen et al., TIP 2021; CHENGY12/APNet): parity with a PyTorch reference written from the
spec (tests/torch_reference_apnet.py), official checkpoint import (``base_k`` aliases), APNet-S
against a NumPy reference of its documented design (docs/apnet.md), the config and the registry.

Parity bound: max |diff| <= 1e-4 * max |reference| in float32, random weights and BN statistics.
"""

import functools
import importlib.util
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from flax import nnx

from reid_jax import models, optim
from reid_jax.convert import keymaps, load_torch_checkpoint, load_torch_weights
from reid_jax.models import apnet as apnet_lib
from reid_jax.models import bot, registry
from tests.torch_reference import (assert_close_rel, assert_embeds_like, check_train_mode_parity,
                                   images, numpy_state_dict, randomize_)
from tests.torch_reference_apnet import TorchAPNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# APNet tests default to 128x64 inputs.
images = functools.partial(images, h=128, w=64)


def apnet_config(**kw):
  base = dict(name='apnet', depth=50, width=64, stem_relu=False, last_stride=1, level=2,
              attention='channel', pyramid='official', se_hidden=8, logits_as_feature=False)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def abstract_model(cfg, num_classes):
  return nnx.eval_shape(lambda: models.build_model(cfg, num_classes))


def concrete_model(cfg, num_classes, seed=0):
  """A trainable model without the slow eager random init: the abstract model's variables filled
  with He-normal kernels, unit scales/variances and zero biases/means."""
  model = abstract_model(cfg, num_classes)
  rng = np.random.RandomState(seed)
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, nnx.Variable):
      continue
    shape, dtype = node.get_value().shape, node.get_value().dtype
    if path[-1] == 'kernel':
      value = rng.randn(*shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif path[-1] in ('scale', 'var'):
      value = np.ones(shape)
    else:
      value = np.zeros(shape)
    node.set_value(jnp.asarray(value, dtype))
  return model


def load_config_file(arg=None):
  spec = importlib.util.spec_from_file_location('apnet_config', os.path.join(ROOT, 'configs',
                                                                             'apnet.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# ------------------------------------------------------------------------------- reference sanity
def test_reference_key_counts_match_the_official_layout():
  # The official model (CHENGY12/APNet modeling/baseline.py) has 722 state_dict entries at
  # level 2 and 652 at level 1 (counted by instantiating it).
  assert len(TorchAPNet(751, level=2).state_dict()) == 722
  assert len(TorchAPNet(751, level=1).state_dict()) == 652


# ------------------------------------------------------------------------------- eval parity
def test_resnet50_level2_384x192_state_dict_file_embeds_like_torch(tmp_path):
  """The official setting at the real size, through a torch.save'd {'model': state_dict} file."""
  tm = randomize_(TorchAPNet(751, level=2), seed=11).eval()
  path = tmp_path / 'apnet.pth'
  torch.save({'model': tm.state_dict(), 'epoch': 160}, path)
  sd = load_torch_checkpoint(path)
  assert any(k.startswith('base_5.0.') for k in sd)
  model = abstract_model(apnet_config(), 751)
  report = load_torch_weights(model, sd)
  assert report.unused == []
  assert len(report.aliases_checked) == len(keymaps.resnet_keys(model.base))  # every base_k alias
  x = images(b=1, h=384, w=192, seed=12)
  got = assert_embeds_like(model, tm, x)
  assert got.shape == (1, 2048)


# (depth, width, level, pyramid, reference splits, logits_as_feature)
NARROW_CASES = {
    'level1': (18, 16, 1, 'official', (), False),
    'level2': (18, 16, 2, 'official', (2,), False),
    'level2_logits': (18, 16, 2, 'official', (2,), True),
    'level3_paper': (18, 16, 3, 'paper', (4, 2), False),
    'level3_official_w24': (18, 24, 3, 'official', (3, 3), False),
    'level0': (18, 8, 0, 'official', (), False),
}


@pytest.mark.parametrize('case', sorted(NARROW_CASES))
def test_narrow_eval_parity(case):
  depth, width, level, pyramid, splits, logits = NARROW_CASES[case]
  tm = randomize_(TorchAPNet(13, level=level, splits=splits, logits_as_feature=logits,
                             depth=depth, width=width), seed=20 + level).eval()
  model = abstract_model(apnet_config(depth=depth, width=width, level=level, pyramid=pyramid,
                                      logits_as_feature=logits), 13)
  report = load_torch_weights(model, numpy_state_dict(tm))
  assert report.unused == []
  x = images(seed=21)
  got = assert_embeds_like(model, tm, x)
  assert got.shape == ((2, 13) if logits else (2, 8 * width * (4 if depth == 50 else 1)))


def test_official_level3_at_real_width_fails_clearly():
  with pytest.raises(ValueError, match="pyramid='paper'"):
    abstract_model(apnet_config(level=3), 751)
  with pytest.raises(ValueError, match='levels 0..3'):
    abstract_model(apnet_config(level=4), 751)
  # The paper's progression builds at the real width: splits 4, 2 then SE.
  model = abstract_model(apnet_config(level=3, pyramid='paper'), 751)
  assert apnet_lib.pyramid_splits(3, 'paper') == (4, 2, 1)
  assert [s.radix for s in model.pyramid[4].sams] == [4, 2]
  assert 'att_ss5.fc1.weight' in keymaps.keymap_for(model)


def test_level2_train_mode_outputs_and_running_stats_match_torch():
  tm = randomize_(TorchAPNet(11, level=2, depth=18, width=8), seed=30).train()
  model = abstract_model(apnet_config(depth=18, width=8, level=2), 11)
  load_torch_weights(model, numpy_state_dict(tm))
  model.train()
  # Includes SAMS's bn1 on [B, 1, 1, C] (batch-only statistics, unbiased running variance) and
  # the frozen-bias BN2d.
  keys = check_train_mode_parity(tm, model, images(b=8, h=64, w=32, seed=31))
  assert any(k.startswith('att_s3.bn1.') for k in keys) and 'BN5.bottleneck2.running_var' in keys


def test_frozen_biases_are_not_trained():
  model = abstract_model(apnet_config(depth=18, width=8, level=2), 5)
  params = nnx.state(model, nnx.Param)
  paths = ['/'.join(map(str, p)) for p, _ in nnx.to_flat_state(params)]
  assert not any(p.startswith('pyramid/') and '/bns/' in p and p.endswith('bias') for p in paths)
  assert any(p.endswith('sams/0/fc1/bias') for p in paths)  # SAMS conv biases are trained


# ------------------------------------------------------------------------------- checkpoint import
@pytest.fixture(scope='module')
def small_checkpoint():
  tm = randomize_(TorchAPNet(7, level=1, depth=18, width=8), seed=40).eval()
  return tm, {k: v.clone() for k, v in tm.state_dict().items()}


def _load(sd, **kw):
  model = abstract_model(apnet_config(depth=18, width=8, level=1), 7)
  return model, load_torch_weights(model, {k: v.numpy() for k, v in sd.items()}, **kw)


def test_tampered_alias_fails_with_the_key_named(small_checkpoint, tmp_path):
  _, sd = small_checkpoint
  sd = dict(sd)
  sd['base_3.0.1.conv2.weight'] = sd['base_3.0.1.conv2.weight'] + 1e-3
  torch.save(sd, tmp_path / 'bare.pth')  # the bare state_dict form
  model = abstract_model(apnet_config(depth=18, width=8, level=1), 7)
  with pytest.raises(ValueError, match=r"'base_3\.0\.1\.conv2\.weight'.*'base\.layer2\.1\.conv2"):
    load_torch_weights(model, load_torch_checkpoint(tmp_path / 'bare.pth'))


def test_alias_checks_follow_exclude_and_missing_aliases(small_checkpoint):
  _, sd = small_checkpoint
  tampered = dict(sd)
  tampered['base_5.0.0.bn1.running_mean'] = tampered['base_5.0.0.bn1.running_mean'] * 2
  # Excluding the canonical key (keep its init) also skips the comparison with its alias...
  _, report = _load(tampered, exclude=['base.layer4.*'])
  assert 'base.layer4.0.bn1.running_mean' in report.excluded
  assert 'base_5.0.0.bn1.running_mean' not in report.aliases_checked + report.unused
  # ...and so does excluding the alias itself.
  _, report = _load(tampered, exclude=['base_5.*'])
  assert 'base.layer4.0.bn1.running_mean' in report.loaded
  # A state_dict without the duplicates loads (nothing to check).
  canonical_only = {k: v for k, v in sd.items() if not k.startswith('base_')}
  model, report = _load(canonical_only)
  assert report.aliases_checked == [] and report.unused == []
  np.testing.assert_array_equal(np.asarray(model.pyramid[2].se.fc1.kernel[...]),
                                sd['att3.fc.0.weight'].numpy().T)
  # An alias with the wrong shape is named too.
  bad = dict(sd)
  bad['base_1.1.weight'] = torch.zeros(3)
  with pytest.raises(ValueError, match=r"'base_1\.1\.weight' must duplicate 'base\.bn1\.weight'"):
    _load(bad)


def test_missing_pyramid_key_is_named(small_checkpoint):
  _, sd = small_checkpoint
  sd = {k: v for k, v in sd.items() if k != 'att4.fc.2.weight'}
  with pytest.raises(KeyError, match=r'att4\.fc\.2\.weight'):
    _load(sd)


def test_spatial_model_has_no_official_layout():
  model = abstract_model(apnet_config(depth=18, width=8, attention='spatial'), 3)
  with pytest.raises(ValueError, match='APNet-S'):
    keymaps.keymap_for(model)


# ------------------------------------------------------------------------------- APNet-S
def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def numpy_part_attention(x, reduce_w, reduce_b, bn, score_w, score_b, parts):
  """docs/apnet.md APNet-S level, in eval mode: z = relu(BN(1x1 conv(x))); rows i belong to stripe
  floor(i * parts / H); context = mean of z over the stripe; a = sigmoid(1x1 conv([z, context]))."""
  scale, bias, mean, var = bn
  z = x @ reduce_w + reduce_b
  z = np.maximum((z - mean) / np.sqrt(var + 1e-5) * scale + bias, 0)
  b, h, w, m = z.shape
  ctx = np.zeros_like(z)
  for p in range(parts):
    rows = [i for i in range(h) if (i * parts) // h == p]
    ctx[:, rows] = z[:, rows].mean(axis=(1, 2), keepdims=True)
  return _sigmoid(np.concatenate([z, ctx], -1) @ score_w + score_b)


@pytest.mark.parametrize('parts,height', [(1, 6), (2, 6), (4, 7)])
def test_spatial_part_attention_matches_numpy_reference(parts, height):
  rng = np.random.RandomState(parts)
  att = apnet_lib.PartSpatialAttention(32, parts, rngs=nnx.Rngs(0))
  c, m = 32, 8
  params = dict(reduce_w=rng.randn(c, m) * 0.3, reduce_b=rng.randn(m) * 0.1,
                bn=(0.5 + rng.rand(m), 0.1 * rng.randn(m), 0.1 * rng.randn(m), 0.5 + rng.rand(m)),
                score_w=rng.randn(2 * m, 1) * 0.5, score_b=rng.randn(1) * 0.1)
  att.reduce.kernel[...] = jnp.asarray(params['reduce_w'][None, None], jnp.float32)
  att.reduce.bias[...] = jnp.asarray(params['reduce_b'], jnp.float32)
  for name, v in zip(('scale', 'bias', 'mean', 'var'), params['bn']):
    getattr(att.bn, name)[...] = jnp.asarray(v, jnp.float32)
  att.score.kernel[...] = jnp.asarray(params['score_w'][None, None], jnp.float32)
  att.score.bias[...] = jnp.asarray(params['score_b'], jnp.float32)
  att.eval()
  x = rng.randn(2, height, 5, c).astype(np.float32)
  ref = numpy_part_attention(x.astype(np.float64), parts=parts, **params)
  got = np.asarray(att(jnp.asarray(x)))
  # The module's parity bound (REL_BOUND): three chained reductions of <= 32 terms, far inside it.
  assert_close_rel(got, ref)
  # Stacking with the residual connection: x + x * a for each level.
  pyr = apnet_lib.SpatialPyramid(c, (parts,), rngs=nnx.Rngs(0))
  pyr.levels[0] = att
  assert_close_rel(np.asarray(pyr(jnp.asarray(x))), x * (1 + ref))


def test_spatial_parts_only_see_their_own_stripe():
  att = apnet_lib.PartSpatialAttention(16, 2, rngs=nnx.Rngs(1))
  att.eval()
  x = np.random.RandomState(2).randn(1, 8, 4, 16).astype(np.float32)
  y = x.copy()
  y[:, 6, 1] += 5.0  # change one position of the lower stripe (rows 4..7)
  a, b = np.asarray(att(jnp.asarray(x))), np.asarray(att(jnp.asarray(y)))
  np.testing.assert_array_equal(a[:, :4], b[:, :4])
  assert np.abs(a[:, 4:] - b[:, 4:]).max() > 0


def test_spatial_pyramid_trains_and_model_shapes():
  # One pyramid stage (levels with 2 parts then 1, train-mode BN) gets finite, non-zero gradients.
  stage = apnet_lib.SpatialPyramid(16, apnet_lib.pyramid_splits(2, 'paper'), rngs=nnx.Rngs(3))
  x = jnp.asarray(np.random.RandomState(4).randn(4, 8, 4, 16).astype(np.float32))

  def objective(stage):
    return jnp.mean(jnp.square(stage(x) - 1.0))

  grads = nnx.jit(nnx.grad(objective))(stage)
  for path, g in nnx.to_flat_state(grads):
    assert np.isfinite(np.asarray(g[...])).all() and np.abs(np.asarray(g[...])).max() > 0, path
  # The whole APNet-S model: train and eval outputs (traced, not run).
  model = abstract_model(apnet_config(depth=18, width=8, level=2, attention='spatial'), 4)
  out = nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((8, 64, 32, 3)))
  assert out['logits'].shape == (8, 4) and out['global_feat'].shape == (8, 64)
  model.eval()
  assert nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((2, 64, 32, 3))).shape == (2, 64)
  assert [len(s.levels) for s in model.pyramid] == [2] * 5


# ------------------------------------------------------------------------------- config, loss
def test_loss_is_the_bot_loss():
  assert registry.get_method('apnet').loss is bot.bnneck_loss
  assert registry.get_method('baseline').loss is bot.bnneck_loss


def test_resnet_stage_accessors_compose_to_call():
  net = concrete_model(apnet_config(depth=18, width=8, level=0), 2).base
  net.eval()
  x = jnp.asarray(images(b=1, h=64, w=32))

  @nnx.jit
  def both(net, x):
    y = x
    for i in range(net.num_stages):
      y = net.stage(i, y)
      assert y.shape[-1] == net.stage_channels[i]
    return y, net(x)

  staged, whole = both(net, x)
  np.testing.assert_array_equal(np.asarray(staged), np.asarray(whole))
  with pytest.raises(ValueError, match='stage index'):
    net.stage(5, x)


def test_default_config_is_the_published_recipe():
  c = load_config_file()
  assert (c.model.name, c.model.level, c.model.attention, c.model.pyramid) == (
      'apnet', 2, 'channel', 'official')
  assert not c.model.stem_relu and c.model.last_stride == 1 and not c.model.logits_as_feature
  assert c.input.dataset == 'market1501' and tuple(c.input.size) == (384, 192)
  assert (c.input.p, c.input.k) == (20, 4)
  assert c.loss.ce_num_classes == 751 and c.loss.ce_epsilon == 0.1 and c.loss.triplet_margin == 0.3
  assert c.loss.center_weight == 0
  o = c.optim
  assert (o.name, o.lr, o.weight_decay, o.weight_decay_bias, o.bias_lr_factor) == (
      'adam', 4e-4, 1e-3, 1e-3, 1.0)
  assert o.step_at == 'epoch_end' and c.num_epochs == 160
  assert (c.eval.flip, c.eval.normalize, c.eval.metric) == ('sum', True, 'euclidean')
  # Per-epoch lr (1-based epochs) of CHENGY12/APNet's WarmupMultiStepLR (solver/lr_scheduler.py)
  # stepped at epoch end (engine/trainer.py).
  lrs = optim.epoch_learning_rates(c.optim, c.num_epochs)
  expected = {1: 4e-6, 2: 4.36e-5, 10: 3.6e-4, 11: 4e-4, 40: 4e-4, 41: 4e-5, 80: 4e-5, 81: 4e-6,
              120: 4e-6, 121: 4e-7, 160: 4e-7}
  for epoch, lr in expected.items():
    # The spec's values are rounded to 3 significant digits (epoch 10: 4e-4 * 0.901).
    np.testing.assert_allclose(lrs[epoch - 1], lr, rtol=2e-3, err_msg=f'epoch {epoch}')


def test_dataset_presets():
  msmt = load_config_file('msmt17')
  assert msmt.input.dataset == 'msmt17' and msmt.model.logits_as_feature
  duke = load_config_file('dukemtmc_reid')
  assert duke.input.dataset == 'dukemtmc_reid' and not duke.model.logits_as_feature
  assert duke.loss.ce_num_classes == 751  # the official quirk, on by default
  assert load_config_file('dataset=dukemtmc_reid,ce751=0').loss.ce_num_classes is None
  spatial = load_config_file('dataset=market1501,attention=spatial,level=3,pyramid=paper')
  assert (spatial.model.attention, spatial.model.level, spatial.model.pyramid) == (
      'spatial', 3, 'paper')
  syn = load_config_file('synthetic')
  assert syn.input.dataset == 'synthetic_reid/demo' and syn.model.level == 2
  assert syn.optim.step_at == 'epoch_end' and syn.eval.flip == 'sum'
  assert syn.loss.ce_num_classes is None
  model = abstract_model(syn.model, 10)
  assert isinstance(model, apnet_lib.APNet)
