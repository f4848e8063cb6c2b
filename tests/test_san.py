"""SAN (reid_jax/models/san.py, configs/san.py; docs/san.md) against PyTorch references written in
tests/torch_reference_san.py: the interpolations, the released recipe's per-epoch learning rates,
checkpoint import (encoder + decoder), the eval-mode test feature, texture and decoder maps of the
full-size model, train steps (losses, gradients, both ``close_specified_layers`` behaviours)
against a PyTorch run of the same steps, images without a texture, and the refusal to train
without textures."""

import pathlib
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from reid_jax import models, optim, train
from reid_jax.convert import _to_flax_layout, keymaps, load_torch_checkpoint, load_torch_weights
from reid_jax.data import transforms
from reid_jax.models import registry, san
from tests import torch_reference as tr
from tests import torch_reference_san as ts

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(arg=None):
  return runpy.run_path(str(ROOT / 'configs' / 'san.py'))['get_config'](arg)


# ----------------------------------------------------------------------------- interpolation
@pytest.mark.parametrize('shape,size', [((2, 37, 19, 3), (256, 256)), ((1, 8, 4, 5), (64, 64)),
                                        ((1, 9, 6, 2), (4, 11))])
def test_align_corners_resize_matches_torch(shape, size):
  x = np.random.RandomState(0).randn(*shape).astype(np.float32)
  ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode='bilinear',
                      align_corners=True).permute(0, 2, 3, 1).numpy()
  got = np.asarray(san.resize_bilinear_align_corners(jnp.asarray(x), size))
  np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)


def test_upsample_and_reflection_pad_match_torch():
  x = np.random.RandomState(1).randn(2, 7, 5, 3).astype(np.float32)
  t = torch.from_numpy(x).permute(0, 3, 1, 2)
  ref = torch.nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False)(t)
  np.testing.assert_allclose(np.asarray(san.upsample2x_bilinear(jnp.asarray(x))),
                             ref.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-6)
  ref = torch.nn.ReflectionPad2d(3)(t).permute(0, 2, 3, 1).numpy()
  np.testing.assert_array_equal(np.asarray(san.reflect_pad(jnp.asarray(x), 3)), ref)


# ----------------------------------------------------------------------------- recipe
def test_lr_tables_of_every_group():
  c = load_config()
  groups = models.get_method('san').groups(c)
  assert [(g.name, g.objective, g.section) for g in groups] == [
      ('warmup', 'reid', 'optim_warmup'), ('main', 'reid', 'optim'),
      ('encoder', 'decoder', 'optim_encoder'), ('decoder', 'decoder', 'optim_decoder')]
  tables = {g.name: optim.epoch_learning_rates(c[g.section], c.num_epochs) for g in groups}
  assert c.num_epochs == 320
  # Warm-up Adam: ExponentialLR(gamma=1.259) stepped after each epoch, epochs 0-19 only.
  warm = [8e-6 * 1.259**e if e < 20 else 0.0 for e in range(320)]
  # AMSGrad with fresh moments from epoch 20: MultiStepLR x0.5 at 40, 80, ..., 280 of its 300.
  main = [0.0 if e < 20 else 8e-4 * 0.5 ** min((e - 20) // 40, 7) for e in range(320)]
  np.testing.assert_allclose(tables['warmup'], warm, rtol=1e-12)
  np.testing.assert_allclose(tables['main'], main, rtol=1e-12)
  np.testing.assert_allclose(tables['encoder'], 1e-5)
  np.testing.assert_allclose(tables['decoder'], 1e-5)
  assert tables['warmup'][19] == pytest.approx(6.36e-4, rel=1e-3)  # 8e-6 x 1.259^19
  assert tables['main'][59] == pytest.approx(8e-4) and tables['main'][60] == pytest.approx(4e-4)
  assert tables['main'][319] == pytest.approx(8e-4 / 128)
  # Exactly one ReID optimizer is live in every epoch.
  assert all((w > 0) != (m > 0) for w, m in zip(tables['warmup'], tables['main']))


def test_config_is_the_released_recipe():
  c = load_config()
  assert c.model.name == 'san' and c.model.depth == 50 and c.model.last_stride == 1
  assert c.model.stem_relu and c.model.feature_dim == 512 and c.model.texture_size == 256
  assert tuple(c.model.decoder_channels) == (512, 256, 64, 32, 16)
  assert c.model.close_head == 'decoder_step' and c.input.missing_texture == 'error'
  assert c.input.dataset == 'cuhk03_np/labeled' and tuple(c.input.size) == (256, 128)
  assert (c.input.p, c.input.k, c.input.crop, c.input.translate_prob) == (16, 4, 'translate', 0.5)
  assert c.input.texture and c.input.texture_size == 256 and not c.input.flip_texture
  assert tuple(c.input.erasing_fill) == (0.485, 0.456, 0.406) and c.input.erasing_prob == 0.5
  assert (c.optim.name, c.optim.weight_decay, c.optim_warmup.name) == ('amsgrad', 5e-4, 'adam')
  assert c.optim_warmup.weight_decay == 5e-4
  for s in (c.optim_encoder, c.optim_decoder):
    assert (s.name, s.lr, tuple(s.betas), s.weight_decay) == ('adam', 1e-5, (0.5, 0.999), 0.0)
  assert (c.eval.flip, c.eval.normalize, c.eval.metric) == ('none', False, 'sqeuclidean')
  assert (c.loss.rec_weight, c.loss.tr_weight) == (1.0, 1.0)
  d = load_config('market1501,close_head=rest_of_epoch,flip_texture=1,missing_texture=skip')
  assert d.input.dataset == 'market1501' and d.model.close_head == 'rest_of_epoch'
  assert d.input.flip_texture and d.input.missing_texture == 'skip'
  s = load_config('synthetic')
  assert s.input.dataset == 'synthetic_reid/demo' and s.input.texture
  assert s.input.texture_size == s.model.texture_size
  # The demo's documented deviations (docs/san.md, "Demo"); the ReID objective is the recipe's.
  assert (s.optim_encoder.lr, s.loss.tr_weight, s.optim_decoder.lr) == (0.0, 0.01, 1e-3)
  assert (s.loss.ce_epsilon, s.loss.triplet_margin) == (c.loss.ce_epsilon, c.loss.triplet_margin)
  with pytest.raises(ValueError, match='close_head'):
    load_config('close_head=always')
  with pytest.raises(ValueError, match='missing_texture'):
    load_config('missing_texture=zero')


def test_training_without_textures_is_refused_saying_what_san_needs(monkeypatch, tmp_path):
  method = models.get_method('san')
  c = load_config('synthetic')
  assert method.batch_fields(c) == ('image', 'label', 'texture')
  c.input.missing_texture = 'skip'
  assert method.batch_fields(c) == ('image', 'label', 'texture', 'texture_valid')
  c.input.missing_texture = 'zero'
  with pytest.raises(ValueError, match='missing_texture'):
    method.batch_fields(c)
  c = load_config('synthetic')
  c.input.texture = False
  with pytest.raises(ValueError, match=r'config.input.texture=True'):
    method.batch_fields(c)
  # A dataset prepared without textures: the loop refuses before it builds or compiles anything,
  # saying what SAN needs.
  from reid_jax import data
  c = load_config('market1501')
  info = data.DatasetInfo(name='market1501', num_classes=751, num_cameras=6,
                          split_sizes={'train': 12936}, image_shape=(None, None, 3),
                          features=('image', 'pid', 'camid', 'label'), parts=None)
  monkeypatch.setattr(train, 'ensure_prepared', lambda *a: 'market1501')
  monkeypatch.setattr(data, 'dataset_info', lambda *a, **k: info)

  def built(*a, **k):
    raise AssertionError('the model was built before the dataset was checked')
  monkeypatch.setattr(train, 'make_mesh', built)
  monkeypatch.setattr(train, 'init_state', built)
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(c, str(tmp_path / 'run'))
  for words in ("'market1501' has no textures", 'a texture for every training image',
                'synthetic_reid', '--texture_dir'):
    assert words in str(e.value), (words, str(e.value))
  c.input.texture = False  # and a config that does not ask for them
  with pytest.raises(ValueError, match='config.input.texture is off'):
    train.train_and_evaluate(c, str(tmp_path / 'run'))


def test_texture_follows_the_flip_only_with_flip_texture():
  rng = np.random.RandomState(0)
  example = {'image': rng.randint(0, 255, (16, 8, 3), np.uint8),
             'texture': rng.randint(0, 255, (8, 8, 3), np.uint8)}
  common = dict(size=(16, 8), flip_prob=1.0, crop='none', erasing_prob=0.0)
  plain = transforms.Augment(**common)(example, np.random.default_rng(0))
  flipped = transforms.Augment(flip_texture=True, **common)(example, np.random.default_rng(0))
  expected = example['texture'].astype(np.float32) / 127.5 - 1
  np.testing.assert_allclose(plain['texture'], expected, atol=1e-6)
  np.testing.assert_allclose(flipped['texture'], expected[:, ::-1], atol=1e-6)


def test_decoder_triplet_is_the_official_pattern_summed_over_groups():
  rng = np.random.RandomState(0)
  maps = [rng.randn(12, h, w, c).astype(np.float32) * s
          for (h, w, c), s in zip(((2, 1, 3), (4, 2, 2), (8, 4, 2), (16, 8, 1)),
                                  (0.3, 0.5, 0.4, 0.6))]
  got = float(san.decoder_triplet_loss([jnp.asarray(m) for m in maps], 4, 0.3))
  sims = [torch.from_numpy(m).permute(0, 3, 1, 2) for m in maps]
  zeros = torch.zeros(12, 3, 4, 4)
  _, _, ref = ts.decoder_loss(zeros, zeros, sims)
  assert got == pytest.approx(float(ref), rel=1e-6)
  with pytest.raises(ValueError, match='K >= 4'):
    san.decoder_triplet_loss([jnp.asarray(m[:9]) for m in maps], 3)


# ----------------------------------------------------------------------------- full-size eval
def test_full_size_checkpoint_loads_and_matches_torch(tmp_path):
  torch.manual_seed(0)
  enc = tr.randomize_(ts.TorchSANEncoder(num_classes=7), seed=1).eval()
  dec = tr.randomize_(ts.TorchSANDecoder(), seed=2).eval()
  path = tmp_path / 'checkpoint_ep3.pth.tar'
  torch.save(ts.checkpoint_dict(enc, dec, epoch=3), path)
  sd = load_torch_checkpoint(path)
  assert len([k for k in sd if not k.startswith('decoder.')]) == 327
  assert len([k for k in sd if k.startswith('decoder.')]) == 86
  c = load_config()
  model = models.build_model(c.model, 7)
  report = load_torch_weights(model, sd)
  assert report.unused == [] and len(report.loaded) == len(keymaps.keymap_for(model))

  x = tr.images(2, 256, 128)

  @jax.jit
  def outputs(graphdef, state, x):
    m = nnx.merge(graphdef, state)
    m.eval()
    return m(x), m.reconstruct(x)

  v, (texture, sims) = outputs(*nnx.split(model), jnp.asarray(x))
  with torch.no_grad():
    v_ref = enc(tr.nchw(x))
    tex_ref, sims_ref = dec(*enc.maps(tr.nchw(x)))
  tr.assert_close_rel(v, v_ref.numpy())
  nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()  # noqa: E731
  tr.assert_close_rel(texture, nhwc(tex_ref))
  assert texture.shape == (2, 256, 256, 3)
  for got, ref, hw in zip(sims, sims_ref, ((32, 16), (64, 32), (128, 64), (256, 128))):
    assert got.shape[1:3] == hw
    tr.assert_close_rel(got, nhwc(ref))


# ----------------------------------------------------------------------------- train steps
K, P, CLASSES = 4, 4, 6
SIZE, TEX = (64, 32), 32
EPOCH_STEPS = (0, 1, 2, 0)  # three batches of one epoch, then the first of the next
LRS = {'main': 5e-4, 'encoder': 2e-4, 'decoder': 2e-4}


def narrow_config(close='decoder_step'):
  c = load_config('synthetic')
  c.model.update(depth=18, width=8, feature_dim=32, decoder_channels=(16, 8, 8, 4, 4),
                 texture_size=TEX, close_head=close)
  c.input.update(p=P, k=K, size=SIZE, texture_size=TEX)
  c.loss.tr_weight = 1.0  # the recipe's (the demo weights the decoder triplet 0.01)
  sgd = dict(name='sgd', momentum=0.9, nesterov=False, bias_lr_factor=1.0)
  c.optim.update(weight_decay=5e-4, weight_decay_bias=5e-4, **sgd)
  del c['optim_warmup']  # one ReID optimizer (a smaller step to compile)
  c.optim_encoder.update(**sgd)
  c.optim_decoder.update(**sgd)
  return c


def batches(n):
  rng = np.random.RandomState(3)
  labels = np.repeat(rng.permutation(CLASSES)[:P], K).astype(np.int32)
  textures = rng.uniform(-1, 1, (CLASSES, TEX, TEX, 3)).astype(np.float32)
  return [{'image': rng.randn(P * K, *SIZE, 3).astype(np.float32), 'label': labels,
           'texture': textures[labels]} for _ in range(n)]


def torch_run(enc, dec, data, close):
  """The official loop (``ts.train_step``: optimizers zeroed with ``set_to_none=False`` as in
  PyTorch 1.x, the head closed for each decoder step); ``open_all_layers`` after every batch
  (``close='decoder_step'``, main.py) or only at each epoch start (``'rest_of_epoch'``)."""
  opts = {'main': torch.optim.SGD(enc.parameters(), lr=LRS['main'], momentum=0.9,
                                  weight_decay=5e-4),
          # Over every encoder parameter, as the official optimizer_encoder: fc/classifier get
          # zero gradients from the decoder loss and stay put.
          'encoder': torch.optim.SGD(enc.parameters(), lr=LRS['encoder'], momentum=0.9),
          'decoder': torch.optim.SGD(dec.parameters(), lr=LRS['decoder'], momentum=0.9)}
  losses, states = [], []
  for batch, epoch_step in zip(data, EPOCH_STEPS):
    if epoch_step == 0 or close == 'decoder_step':
      ts.set_head(enc, closed=False)  # open_all_layers (after the previous batch)
    dec.train()
    losses.append(ts.train_step(enc, dec, opts, tr.nchw(batch['image']),
                                torch.from_numpy(batch['label']).long(),
                                tr.nchw(batch['texture'])))
    states.append(torch_state(enc, dec))
  return losses, states


def torch_state(enc, dec):
  sd = {k: v.detach().numpy().copy() for k, v in enc.state_dict().items()}
  sd.update({'decoder.' + k: v.detach().numpy().copy() for k, v in dec.state_dict().items()})
  return sd


def flax_state(model):
  return {k: np.asarray(t.variable.get_value()) for k, t in keymaps.keymap_for(model).items()}


def jax_run(c, sd, data):
  model = models.build_model(c.model, CLASSES)
  load_torch_weights(model, sd)
  method = registry.get_method('san')
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  optimizers = train.Optimizers(method.groups(c), c, params)
  state = {'params': params, 'rest': rest, 'opt_state': optimizers.init(params), 'extra': None,
           'step': jnp.zeros([], jnp.int32)}
  step = train.make_train_step(graphdef, optimizers, c, None)
  metrics, states = [], []
  for i, (batch, epoch_step) in enumerate(zip(data, EPOCH_STEPS)):
    context = {'epoch': jnp.int32(i // 3), 'epoch_step': jnp.int32(epoch_step)}
    state, m = step(state, {k: jnp.asarray(v) for k, v in batch.items()},
                    {k: jnp.float32(v) for k, v in LRS.items()}, context)
    metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    states.append(flax_state(train.model_from_state(graphdef, state)))
  return metrics, states


@pytest.fixture(scope='module')
def runs():
  """``runs(close)``: the four steps of both sides from the same weights, cached per mode."""
  cache = {}

  def run(close):
    if close not in cache:
      torch.manual_seed(0)
      enc = tr.randomize_(ts.TorchSANEncoder(CLASSES, feature_dim=32, depth=18, width=8), seed=4)
      dec = tr.randomize_(ts.TorchSANDecoder((8, 16, 32, 64), (16, 8, 8, 4, 4), TEX), seed=5)
      sd = torch_state(enc, dec)
      data = batches(len(EPOCH_STEPS))
      c = narrow_config(close)
      keys = keymaps.keymap_for(models.build_model(c.model, CLASSES))
      to_flax = lambda s: {k: _to_flax_layout(s[k], t.kind) for k, t in keys.items()}  # noqa: E731
      ref_losses, ref_states = torch_run(enc, dec, data, close)
      losses, states = jax_run(c, sd, data)
      cache[close] = {'initial': to_flax(sd), 'ref_losses': ref_losses,
                      'ref_states': [to_flax(s) for s in ref_states], 'losses': losses,
                      'states': states, 'keys': keys}
    return cache[close]
  return run


def assert_moves_alike(got, ref, got_before, ref_before, key, bound=2e-3):
  """Each side's change from its own previous value agrees within ``bound`` x the largest entry
  of the reference change (plus a few float32 ulps of the values)."""
  d_got, d_ref = got - got_before, ref - ref_before
  err = np.abs(d_got - d_ref).max()
  ulps = 4 * np.finfo(np.float32).eps * np.abs(ref).max()
  assert err <= bound * np.abs(d_ref).max() + ulps, (key, err, np.abs(d_ref).max())


def test_train_step_losses_and_gradients_match_torch(runs):
  r = runs('decoder_step')
  for name in ('loss', 'decoder', 'rec_l1', 'decoder_triplet'):
    assert r['losses'][0][name] == pytest.approx(r['ref_losses'][0][name], rel=1e-5), name
  # One SGD step: each tensor's change is -lr x (its gradient + decay); the backbone's adds the
  # ReID gradient (main) and the decoder gradient (encoder), fc/classifier have ReID only,
  # the decoder decoder only. Running statistics: one train-mode forward.
  still = set()
  for key in r['keys']:
    got, ref = r['states'][0][key], r['ref_states'][0][key]
    if np.array_equal(ref, r['initial'][key]):
      still.add(key)
      continue
    assert_moves_alike(got, ref, r['initial'][key], r['initial'][key], key)
  # Only the biases of the 1x1 convs feeding a train-mode BN have no gradient (BN removes them).
  assert still == {f'decoder.{n}.0.bias' for n in ('reduce_dim', 'embed_layer1', 'embed_layer2',
                                                     'embed_layer3')}


def relative_change_error(r, i, key):
  got_before = r['initial'] if i == 0 else r['states'][i - 1]
  ref_before = r['initial'] if i == 0 else r['ref_states'][i - 1]
  d_got = r['states'][i][key] - got_before[key]
  d_ref = r['ref_states'][i][key] - ref_before[key]
  return float(np.abs(d_got - d_ref).max() / max(np.abs(d_ref).max(), 1e-30))


def assert_steps_match(r, bounds=(2e-3, 1e-2, 3e-2, 3e-2)):
  """Steps 0 and 1: every tensor's change. Steps 2 and 3 start from weights that differ by the
  float32 rounding of earlier steps, which batch-hard mining and the hinges amplify: the head
  (``fc``, ``classifier``, ``fc``'s BN statistics) and the losses."""
  head = [k for k in r['keys'] if k.startswith(('fc.', 'classifier.'))]
  worst = [max(((relative_change_error(r, i, k), k) for k in r['keys']
                if not k.endswith('0.bias') or not k.startswith('decoder.')), default=None)
           for i in range(len(EPOCH_STEPS))]
  print('worst relative change error per step:', worst)
  for i in range(len(EPOCH_STEPS)):
    got_before = r['initial'] if i == 0 else r['states'][i - 1]
    ref_before = r['initial'] if i == 0 else r['ref_states'][i - 1]
    for key in r['keys'] if i < 2 else head:
      assert_moves_alike(r['states'][i][key], r['ref_states'][i][key], got_before[key],
                         ref_before[key], (i, key), bound=bounds[i])
    for name in ('loss', 'decoder'):
      assert r['losses'][i][name] == pytest.approx(r['ref_losses'][i][name], rel=1e-3)
  return head


def test_official_close_head_over_batches_matches_torch(runs):
  # main.py closes fc/classifier for each decoder step and reopens them after every batch:
  # nothing changes, the head is trained (and fc's BN updated) at every step.
  r = runs('decoder_step')
  head = assert_steps_match(r)
  for i in range(1, len(EPOCH_STEPS)):
    for key in head:
      assert not np.array_equal(r['states'][i][key], r['states'][i - 1][key]), (i, key)


def test_rest_of_epoch_close_head_over_batches_matches_torch(runs):
  r = runs('rest_of_epoch')
  head = assert_steps_match(r)
  # Closed steps: fc's BN statistics stay put, yet weight decay and momentum move the head.
  for i in (1, 2):
    for stat in ('fc.1.running_mean', 'fc.1.running_var'):
      np.testing.assert_array_equal(r['states'][i][stat], r['states'][i - 1][stat])
    for key in head:
      if 'running' not in key:
        assert not np.array_equal(r['states'][i][key], r['states'][i - 1][key]), key
  assert not np.array_equal(r['states'][3]['fc.1.running_mean'],
                            r['states'][2]['fc.1.running_mean'])  # reopened
  # ... and the runs differ from the official behaviour's from the first closed step on.
  official = runs('decoder_step')
  assert r['losses'][0] == official['losses'][0]
  assert not np.allclose(r['states'][1]['fc.1.running_mean'],
                         official['states'][1]['fc.1.running_mean'])


def test_head_closed_switch():
  ctx = registry.StepContext(step=jnp.int32(5), epoch=jnp.int32(0), epoch_step=jnp.int32(5))
  assert san.head_closed(narrow_config('decoder_step'), ctx) is None
  assert bool(san.head_closed(narrow_config('rest_of_epoch'), ctx))
  ctx0 = registry.StepContext(step=jnp.int32(5), epoch=jnp.int32(1), epoch_step=jnp.int32(0))
  assert not bool(san.head_closed(narrow_config('rest_of_epoch'), ctx0))
  with pytest.raises(ValueError, match='close_head'):
    models.build_model(narrow_config('never').model, CLASSES)


# ----------------------------------------------------------------------------- missing textures
VALID = np.array([1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1], bool)  # P3 x K4, two images without one


def test_decoder_triplet_drops_the_terms_of_images_without_texture():
  rng = np.random.RandomState(1)
  maps = [rng.randn(12, h, w, c).astype(np.float32) * s
          for (h, w, c), s in zip(((2, 1, 3), (4, 2, 2), (8, 4, 2), (16, 8, 1)),
                                  (0.3, 0.5, 0.4, 0.6))]
  sims = [torch.from_numpy(m).permute(0, 3, 1, 2) for m in maps]
  zeros = torch.zeros(12, 3, 4, 4)
  _, _, ref = ts.decoder_loss(zeros, zeros, sims, valid=VALID)
  _, _, ref_all = ts.decoder_loss(zeros, zeros, sims)
  got = float(san.decoder_triplet_loss([jnp.asarray(m) for m in maps], 4, 0.3, VALID))
  assert got == pytest.approx(float(ref), rel=1e-6)
  assert float(ref) < float(ref_all)  # some of the eight terms are gone (each is >= 0)
  every = float(san.decoder_triplet_loss([jnp.asarray(m) for m in maps], 4, 0.3,
                                         np.ones(12, bool)))
  assert every == pytest.approx(float(ref_all), rel=1e-6)
  none = san.decoder_triplet_loss([jnp.asarray(m) for m in maps], 4, 0.3, np.zeros(12, bool))
  assert float(none) == 0.0


def test_texture_l1_averages_over_images_with_texture():
  rng = np.random.RandomState(2)
  pred, target = (rng.uniform(-1, 1, (12, 8, 8, 3)).astype(np.float32) for _ in range(2))
  maps = [torch.zeros(12, 1, 1, 1)] * 4
  _, ref, _ = ts.decoder_loss(tr.nchw(pred), tr.nchw(target), maps, valid=VALID)
  got = float(san.texture_l1(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(VALID)))
  assert got == pytest.approx(float(ref), rel=1e-6)
  _, ref_all, _ = ts.decoder_loss(tr.nchw(pred), tr.nchw(target), maps)
  assert float(san.texture_l1(jnp.asarray(pred), jnp.asarray(target))) == pytest.approx(
      float(ref_all), rel=1e-6)
  assert abs(float(ref) - float(ref_all)) > 1e-3  # the two images without texture count
  assert float(san.texture_l1(jnp.asarray(pred), jnp.asarray(target),
                              jnp.zeros(12, bool))) == 0.0


def test_san_loss_ignores_the_targets_of_images_without_texture():
  c = narrow_config()
  c.input.update(p=3, missing_texture='skip')
  model = models.build_model(c.model, CLASSES)
  rng = np.random.RandomState(4)
  labels = np.repeat(np.arange(3), K).astype(np.int32)
  batch = {'image': jnp.asarray(rng.randn(12, *SIZE, 3).astype(np.float32)),
           'label': jnp.asarray(labels),
           'texture': rng.uniform(-1, 1, (12, TEX, TEX, 3)).astype(np.float32),
           'texture_valid': jnp.asarray(VALID)}
  garbage = dict(batch, texture=np.where(VALID[:, None, None, None], batch['texture'], 7.0))
  method = models.get_method('san')
  assert method.batch_fields(c)[-1] == 'texture_valid'

  def loss(b):
    objectives, metrics, _ = method.loss(nnx.clone(model), b, extra=None, config=c)
    return {k: float(v) for k, v in {**objectives, **metrics}.items()}
  a, b = loss(batch), loss(garbage)
  assert a['decoder'] == b['decoder'] and a['rec_l1'] == b['rec_l1']
  assert a['texture_valid'] == pytest.approx(10 / 12)
  everything = loss({k: v for k, v in batch.items() if k != 'texture_valid'})
  assert everything['rec_l1'] != a['rec_l1'] and 'texture_valid' not in everything


def test_other_dataset_checkpoint_loads_for_testing_without_its_classifier(tmp_path):
  enc = tr.randomize_(ts.TorchSANEncoder(CLASSES, feature_dim=32, depth=18, width=8), seed=6)
  dec = tr.randomize_(ts.TorchSANDecoder((8, 16, 32, 64), (16, 8, 8, 4, 4), TEX), seed=7)
  ckpt = ts.checkpoint_dict(enc, dec, epoch=10)
  ckpt['state_dict'] = {'module.' + k: v for k, v in ckpt['state_dict'].items()}  # DataParallel
  torch.save(ckpt, tmp_path / 'checkpoint_ep10.pth.tar')
  sd = load_torch_checkpoint(tmp_path / 'checkpoint_ep10.pth.tar')
  c = narrow_config()
  model = models.build_model(c.model, CLASSES + 5)
  with pytest.raises(ValueError, match='classifier'):
    load_torch_weights(model, sd)
  report = load_torch_weights(model, sd, skip_mismatched_classifiers=True)
  assert report.skipped == report.excluded == ['classifier.bias', 'classifier.weight']
  assert report.unused == [] and len(report.loaded) == len(keymaps.keymap_for(model)) - 2
  x = tr.images(2, *SIZE)
  v = tr.assert_embeds_like(model, enc, x)
  assert v.shape == (2, 32) and (v >= 0).all()
  texture, sims = san.reconstruct(model, x)
  assert texture.shape == (2, TEX, TEX, 3) and len(sims) == 4
  # The loop's pictures hook: input | predicted texture | target, one PNG per image.
  target = np.random.RandomState(0).uniform(-1, 1, (2, TEX, TEX, 3)).astype(np.float32)
  paths = models.get_method('san').pictures(model, {'image': x, 'texture': target}, c, tmp_path)
  assert [pathlib.Path(p).name for p in paths] == ['texture_0000.png', 'texture_0001.png']
  from PIL import Image
  with Image.open(paths[0]) as im:
    assert im.size == (TEX // 2 + 2 * TEX + 16, TEX + 8)


def test_convert_cli_writes_one_checkpoint_with_encoder_and_decoder(tmp_path):
  import os
  import subprocess
  import sys

  from reid_jax import checkpoint
  enc = tr.randomize_(ts.TorchSANEncoder(CLASSES, feature_dim=32, depth=18, width=8), seed=8).eval()
  dec = tr.randomize_(ts.TorchSANDecoder((8, 16, 32, 64), (16, 8, 8, 4, 4), TEX), seed=9).eval()
  src = tmp_path / 'checkpoint_ep5.pth.tar'
  torch.save(ts.checkpoint_dict(enc, dec, epoch=5), src)
  cfg_file = tmp_path / 'narrow_san.py'
  cfg_file.write_text(
      'import runpy\n'
      'def get_config(arg=None):\n'
      f"  c = runpy.run_path({str(ROOT / 'configs' / 'san.py')!r})['get_config']('synthetic')\n"
      '  c.model.update(depth=18, width=8, feature_dim=32, decoder_channels=(16, 8, 8, 4, 4),\n'
      f'                 texture_size={TEX})\n'
      '  return c\n')
  out = tmp_path / 'ckpt'
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'reid_jax.convert', f'--config={cfg_file}',
                         f'--torch_checkpoint={src}', f'--out={out}'], env=env, cwd=ROOT,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  c = narrow_config()
  assert checkpoint.read_meta(str(out))['num_classes'] == CLASSES
  model = checkpoint.restore_model(c.model, str(out))
  x = tr.images(2, *SIZE)
  tr.assert_embeds_like(model, enc, x)
  texture, sims = san.reconstruct(model, x)
  with torch.no_grad():
    tex_ref, sims_ref = dec(*enc.maps(tr.nchw(x)))
  tr.assert_close_rel(texture, tex_ref.permute(0, 2, 3, 1).numpy())
  tr.assert_close_rel(sims[3], sims_ref[3].permute(0, 2, 3, 1).numpy())
