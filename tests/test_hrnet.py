"""HRNet-W32 as BPBreID builds it (reid_jax/models/hrnet.py) against the PyTorch HRNet written from
the public architecture in tests/torch_reference_hrnet.py: the 1933-entry key layout, eval-mode
parity of the 1920-channel map and the four branch outputs at 256x128 (full W32), train-mode parity
of a narrow network (batch statistics and running statistics), the ImageNet HRNet-W32-C file layout
through ``config.model.pretrained``, BPBreID checkpoint prefixes, and input checks.

Golden counts (1933 entries, per-prefix counts, 31,866,432 parameters) are those observed by running
the official VlSomers/bpbreid ``torchreid/models/hrnet.py`` class, not produced by this code.
"""

import collections

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from reid_jax import train
from reid_jax.convert import (backbone_prefix, keymaps, load_backbone, load_torch_checkpoint,
                              load_torch_weights)
from reid_jax.models.hrnet import HRNet
from reid_jax.models.mpn import ConvBNReLU
from reid_jax.models.layers import resize_bilinear_align_corners
from tests.tolerances import sum_tol
from tests.torch_reference import (assert_close_rel, assert_running_stats_match, images, nchw,
                                   numpy_state_dict, randomize_)
from tests.torch_reference_hrnet import TorchHRNet

# A narrow network with every structural feature of W32 (4 branches, multi-step stride-2 fuse
# chains, transition1.0 width change, two modules in stage 3 so module outputs feed modules).
NARROW = dict(width=4, stage_modules=(1, 2, 1), blocks=1, stem_width=8)
# The narrow checks share one input shape, so their ops compile once. In train mode the lowest
# branch (4x2 at 128x64) still gives BatchNorm 32 values per channel.
NARROW_X = images(b=4, h=128, w=64, seed=10)
BPBREID_PREFIX = 'backbone_appearance_feature_extractor.'
IMAGENET_HEAD = ('downsamp_modules.', 'final_layer.', 'classifier.')


def nhwc(t):
  return t.detach().permute(0, 2, 3, 1).numpy()


def forward_with_branches(model, x):
  # Eager, op by op: on XLA:CPU compiling the whole W32 forward costs ~5x its op-by-op run.
  return model(jnp.asarray(x), return_branches=True)


def converted(torch_model, **kw):
  """An abstract HRNet filled from ``torch_model``'s state_dict; every key must be consumed."""
  model = nnx.eval_shape(lambda: HRNet(rngs=nnx.Rngs(0), **kw))
  sd = numpy_state_dict(torch_model)
  report = load_torch_weights(model, sd)
  assert report.unused == [] and report.absent == []
  assert sorted(report.loaded) == sorted(k for k in sd if not k.endswith('num_batches_tracked'))
  return model


def assert_forward_parity(model, torch_model, x):
  with torch.no_grad():
    ref, ref_branches = torch_model(nchw(x), return_branches=True)
  got, branches = forward_with_branches(model, x)
  assert got.shape == (x.shape[0], x.shape[1] // 4, x.shape[2] // 4, model.out_features)
  assert_close_rel(got, nhwc(ref), err_msg='feature map')
  for k, (g, r) in enumerate(zip(branches, ref_branches)):
    assert g.shape == (x.shape[0], x.shape[1] // 2**(k + 2), x.shape[2] // 2**(k + 2),
                       model.branch_channels[k])
    assert_close_rel(g, nhwc(r), err_msg=f'branch {k}')


def test_w32_key_layout_and_eval_parity_at_256x128():
  torch_model = randomize_(TorchHRNet(), seed=3).eval()
  sd = torch_model.state_dict()
  assert len(sd) == 1933
  by_prefix = collections.Counter(k.split('.')[0] for k in sd)
  assert by_prefix == {'stage4': 864, 'stage3': 744, 'stage2': 108, 'incre_modules': 96,
                       'layer1': 78, 'transition1': 12, 'cls_head': 7, 'transition2': 6,
                       'transition3': 6, 'bn1': 5, 'bn2': 5, 'conv1': 1, 'conv2': 1}
  assert sum(p.numel() for p in torch_model.parameters()) == 31_866_432
  model = converted(torch_model)
  params = nnx.state(model, nnx.Param)
  assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params)) == 31_866_432
  assert model.out_features == 1920 and model.branch_channels == (32, 64, 128, 256)
  model.eval()
  assert_forward_parity(model, torch_model, images(b=1, h=256, w=128, seed=4))


def test_narrow_train_mode_matches_torch_batch_and_running_stats():
  torch_model = randomize_(TorchHRNet(**NARROW), seed=5).train()
  model = converted(torch_model, **NARROW)
  model.train()
  # Train-mode BN normalises with batch statistics and updates the running ones.
  assert_forward_parity(model, torch_model, NARROW_X)
  assert len(assert_running_stats_match(torch_model, model)) == 2 * sum(
      isinstance(m, torch.nn.BatchNorm2d) for m in torch_model.modules())


def test_dim_reduction_applies_cls_head():
  kw = dict(NARROW, dim_reduction=True, dim_reduction_channels=24)
  torch_model = randomize_(TorchHRNet(**kw), seed=7).eval()
  model = converted(torch_model, **kw)
  assert model.out_features == 24
  model.eval()
  assert_forward_parity(model, torch_model, NARROW_X)


class Holder(nnx.Module):
  """A method's model: every method keeps its backbone at ``model.base``."""

  def __init__(self):
    self.base = HRNet(rngs=nnx.Rngs(1), **NARROW)


_ABSTRACT_HOLDER = []


def narrow_holder():
  """An abstract ``Holder`` (no random init: on XLA:CPU each new conv shape's init compiles,
  ~1 s apiece), traced once per session and then cloned."""
  if not _ABSTRACT_HOLDER:
    _ABSTRACT_HOLDER.append(nnx.eval_shape(Holder))
  return nnx.clone(_ABSTRACT_HOLDER[0])


def imagenet_state_dict(seed=9):
  """The HRNet-W32-C file's layout (narrow): the backbone without ``cls_head``, plus the ImageNet
  head ``downsamp_modules.*``, ``final_layer.*``, ``classifier.*``."""
  net = randomize_(TorchHRNet(imagenet_head=True, **NARROW), seed=seed).eval()
  return net, net.state_dict()


def test_imagenet_file_loads_through_config_pretrained(tmp_path, caplog):
  net, sd = imagenet_state_dict()
  path = tmp_path / 'hrnetv2_w32_imagenet_pretrained.pth'
  torch.save(sd, path)

  holder = narrow_holder()
  # The file has no cls_head: that part needs initial values (an abstract model has none).
  holder.base.cls_head = ConvBNReLU(60 * NARROW['width'], 512, rngs=nnx.Rngs(1))
  head_init = {k: np.asarray(t.variable[...]).copy()
               for k, t in keymaps.keymap_for(holder.base).items() if k.startswith('cls_head.')}
  config = ml_collections.ConfigDict(dict(model=dict(pretrained=str(path)),
                                          input=dict(dataset='market1501')))
  with caplog.at_level('INFO', logger='absl'):
    train.load_initial_weights(holder, config)
  assert 'kept at their initial value: cls_head.0.bias' in caplog.text
  # Every backbone tensor is the file's (the forward equals torch's), cls_head keeps its init.
  holder.base.eval()
  assert_forward_parity(holder.base, net, NARROW_X)
  for key, value in head_init.items():
    np.testing.assert_array_equal(np.asarray(keymaps.keymap_for(holder.base)[key].variable[...]),
                                  value, err_msg=key)

  report = load_backbone(holder, load_torch_checkpoint(path))
  assert report.prefix == ''
  assert report.unused == sorted(k for k in sd if k.startswith(IMAGENET_HEAD)
                                 and not k.endswith('num_batches_tracked'))
  assert len(report.unused) == 3 * 6 + 6 + 2  # 3 conv(bias)+BN, conv(bias)+BN, Linear
  assert report.absent == ['cls_head.0.bias', 'cls_head.0.weight', 'cls_head.1.bias',
                           'cls_head.1.running_mean', 'cls_head.1.running_var',
                           'cls_head.1.weight']
  assert sorted(report.loaded) == sorted(k for k in sd if not k.startswith(IMAGENET_HEAD)
                                         and not k.endswith('num_batches_tracked'))
  assert 'cls_head.0.bias' in str(report)


def test_absent_optional_key_needs_a_concrete_model():
  _, sd = imagenet_state_dict()
  model = nnx.eval_shape(lambda: HRNet(rngs=nnx.Rngs(0), **NARROW))
  with pytest.raises(KeyError, match='cls_head.*abstract'):
    load_torch_weights(model, {k: v.numpy() for k, v in sd.items()})


@pytest.mark.parametrize('wrap', ['', 'module.'])
def test_bpbreid_checkpoint_prefix_is_found(tmp_path, wrap):
  net = randomize_(TorchHRNet(**NARROW), seed=11)
  sd = {wrap + BPBREID_PREFIX + k: v for k, v in numpy_state_dict(net).items()}
  # Some of BPBreID's own heads, whose names also end like backbone keys.
  sd[wrap + 'pixel_classifier.bn.weight'] = np.ones(60 * 4, np.float32)
  sd[wrap + 'pixel_classifier.classifier.weight'] = np.ones((9, 60 * 4, 1, 1), np.float32)
  sd[wrap + 'parts_identity_classifier.0.classifier.weight'] = np.ones((7, 512), np.float32)

  holder = narrow_holder()
  keys = keymaps.hrnet_keys(holder.base)
  assert backbone_prefix(sd, list(keys)) == wrap + BPBREID_PREFIX
  # The key map composes under a prefix, as BPBreID's own key map will use it.
  prefixed = keymaps.hrnet_keys(holder.base, BPBREID_PREFIX)
  assert list(prefixed) == [BPBREID_PREFIX + k for k in keys]
  report = load_backbone(holder, sd)
  assert report.prefix == wrap + BPBREID_PREFIX and report.absent == []
  assert report.unused == sorted(k for k in sd if BPBREID_PREFIX not in k)
  # A DataParallel file: load_torch_checkpoint strips 'module.', the prefix finder the rest.
  path = tmp_path / 'bpbreid.pth.tar'
  torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in sd.items()}, 'epoch': 3}, path)
  report = load_backbone(holder, load_torch_checkpoint(path))
  assert report.prefix == BPBREID_PREFIX
  holder.base.eval()
  assert_forward_parity(holder.base, net.eval(), NARROW_X)


@pytest.mark.parametrize('h,w', [(100, 64), (64, 48), (16, 32)])
def test_input_size_must_be_a_multiple_of_32(h, w):
  model = narrow_holder().base
  with pytest.raises(ValueError, match=f'multiples of 32.*{h}x{w}'):
    model(jnp.zeros((1, h, w, 3)))
  with pytest.raises(ValueError, match=r'\[B, H, W, 3\]'):
    model(jnp.zeros((1, 64, 32, 1)))


@pytest.mark.parametrize('kw,field', [(dict(stage_modules=(1, 4)), 'stage_modules'),
                                      (dict(stage_modules=(1, 0, 1)), 'stage_modules'),
                                      (dict(width=0), 'width'), (dict(blocks=0), 'blocks')])
def test_bad_options_name_the_option(kw, field):
  with pytest.raises(ValueError, match=field):
    HRNet(rngs=nnx.Rngs(0), **kw)


def test_random_init_is_kaiming_normal_fan_out(monkeypatch):
  """BPBreID's ``random_init``: every conv kaiming-normal (fan_out, ReLU gain), i.e. std
  sqrt(2 / (k * k * out)) (BN weight 1 and bias 0 is ``BatchNorm``'s own init). The initializer
  each conv is built with is recorded and drawn at one common shape: one compile instead of one
  per conv shape (each ~1 s on XLA:CPU)."""
  inits = []
  build = nnx.Conv.__init__

  def recording(self, *args, kernel_init, **kwargs):
    inits.append(kernel_init)
    build(self, *args, kernel_init=kernel_init, **kwargs)

  monkeypatch.setattr(nnx.Conv, '__init__', recording)
  model = nnx.eval_shape(lambda: HRNet(rngs=nnx.Rngs(0), **NARROW))
  convs = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Conv)]
  torch_convs = [m for m in TorchHRNet(**NARROW).modules() if isinstance(m, torch.nn.Conv2d)]
  assert len(inits) == len(convs) == len(torch_convs)
  shape = (3, 3, 16, 128)  # 18,432 draws: the sample std is within 0.5 % (1 sigma) of the true
  for k, init in enumerate(inits):
    std = float(jnp.std(init(jax.random.key(k), shape)))
    np.testing.assert_allclose(std, (2 / (3 * 3 * 128)) ** 0.5, rtol=0.03)
  assert [c.bias is not None for c in convs].count(True) == 1  # cls_head.0 only


@pytest.mark.parametrize('src', [(8, 4), (16, 8), (32, 16)])
def test_branch_resize_matches_torch_align_corners(src):
  """The branch upsampling (reid_jax.models.layers, shared with SAN) at HRNet's factors 8, 4, 2."""
  x = np.random.RandomState(0).randn(2, *src, 5).astype(np.float32)
  ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(64, 32), mode='bilinear',
                      align_corners=True).permute(0, 2, 3, 1).numpy()
  got = np.asarray(resize_bilinear_align_corners(jnp.asarray(x), (64, 32)))
  # Two taps per axis, weights summing to 1: two chained 2-term sums of magnitude <= max |x|.
  np.testing.assert_allclose(got, ref, rtol=0, atol=sum_tol(2, np.abs(x).max(), depth=2))
