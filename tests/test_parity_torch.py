"""Numerics parity with PyTorch reference modules (tests/torch_reference.py).

Random weights and random BN statistics, converted with ``load_torch_weights``; the bound is
max |diff| <= 1e-4 * max |reference| in float32.
"""

import ml_collections
import numpy as np
import pytest
import torch
from flax import nnx

from reid_jax import models
from reid_jax.convert import load_torch_checkpoint, load_torch_weights
from reid_jax.models.layers import BatchNorm, max_pool
from reid_jax.models.resnet import ResNet
from tests.tolerances import U, assert_close_scaled
from tests.torch_reference import (TorchBoT, TorchResNet, assert_close_rel, assert_embeds_like,
                                   check_train_mode_parity, images, nchw, numpy_state_dict,
                                   randomize_)

def nhwc(t):
  return t.detach().permute(0, 2, 3, 1).numpy()


@nnx.jit
def backbone_forward(model, x):
  return model(x)


def converted_resnet(torch_model, **kw):
  model = nnx.eval_shape(lambda: ResNet(rngs=nnx.Rngs(0), **kw))
  load_torch_weights(model, numpy_state_dict(torch_model))
  model.eval()
  return model


@pytest.mark.parametrize('stem_relu', [True, False])
@pytest.mark.parametrize('last_stride', [1, 2])
def test_resnet50_eval_parity(stem_relu, last_stride):
  tm = randomize_(TorchResNet(50, last_stride=last_stride, stem_relu=stem_relu), seed=1).eval()
  model = converted_resnet(tm, depth=50, last_stride=last_stride, stem_relu=stem_relu)
  x = images()
  with torch.no_grad():
    ref = nhwc(tm(nchw(x)))
  got = backbone_forward(model, x)
  # Output stride 16 with last stride 1, 32 with last stride 2.
  assert ref.shape == ((2, 16, 8, 2048) if last_stride == 1 else (2, 8, 4, 2048))
  assert_close_rel(got, ref)


@pytest.mark.parametrize('depth,kw', [(18, {}), (34, {}), (50, dict(ibn=True)),
                                      (50, dict(ceil_mode=True))])
def test_resnet_variants_parity(depth, kw):
  # Narrow networks keep these fast; the layouts are the full ones.
  tm = randomize_(TorchResNet(depth, width=16, **kw), seed=2).eval()
  jkw = dict(ibn=kw.get('ibn', False), maxpool_ceil_mode=kw.get('ceil_mode', False))
  model = converted_resnet(tm, depth=depth, width=16, **jkw)
  x = images(h=128, w=64)
  with torch.no_grad():
    ref = nhwc(tm(nchw(x)))
  assert_close_rel(backbone_forward(model, x), ref)


@pytest.mark.parametrize('size,ceil', [((13, 9), True), ((13, 9), False), ((64, 32), True)])
def test_max_pool_matches_torch(size, ceil):
  x = np.random.RandomState(3).randn(1, *size, 2).astype(np.float32)
  pool = torch.nn.MaxPool2d(3, 2, 0 if ceil else 1, ceil_mode=ceil)
  ref = nhwc(pool(nchw(x)))
  got = max_pool(x, 3, 2, padding=0 if ceil else 1, ceil_mode=ceil)
  np.testing.assert_array_equal(np.asarray(got), ref)


@pytest.mark.parametrize('neck_feat', ['after', 'before'])
def test_bot_state_dict_file_embeds_like_torch(tmp_path, neck_feat):
  tm = randomize_(TorchBoT(751, neck_feat=neck_feat), seed=4).eval()
  path = tmp_path / 'bot.pth'
  torch.save(tm.state_dict(), path)
  cfg = ml_collections.ConfigDict(dict(name='baseline', depth=50, stem_relu=False, last_stride=1,
                                       neck_feat=neck_feat))
  model = nnx.eval_shape(lambda: models.build_model(cfg, 751))
  report = load_torch_weights(model, load_torch_checkpoint(path))
  assert report.unused == []
  x = images(seed=5)
  got = assert_embeds_like(model, tm, x)
  assert got.shape == (2, 2048)


def test_batchnorm_train_mode_and_running_stats_match_torch():
  rng = np.random.RandomState(6)
  for shape, torch_bn in (((6, 5, 4, 3), torch.nn.BatchNorm2d(3)), ((8, 7), torch.nn.BatchNorm1d(7))):
    bn = BatchNorm(shape[-1])
    torch_bn.train()
    for step in range(3):
      x = (2 + 3 * rng.randn(*shape)).astype(np.float32)
      tx = torch.from_numpy(x)
      if len(shape) == 4:
        ref = nhwc(torch_bn(tx.permute(0, 3, 1, 2)))
      else:
        ref = torch_bn(tx).detach().numpy()
      got = np.asarray(bn(x))
      # Batch statistics over n values, partial sums <= n mean |x| (mean) and n mean x^2
      # (variance); the output divides the mean's error by sigma and multiplies the variance's
      # relative error by |y| / 2. The running statistics blend them with weights summing to
      # <= 1, and round once per step on each side (rtol 2U per step). Still caught: a biased
      # running variance (n / (n - 1): +0.8 % of the batch variance, 7e-3 here), another momentum,
      # eps 1e-3 for 1e-5 (~2e-4 in the output, 8x the output's tolerance).
      flat = x.reshape(-1, shape[-1]).astype(np.float64)
      n, m1, m2, var = len(flat), np.abs(flat).mean(0), (flat ** 2).mean(0), flat.var(0)
      y_scale = (m1 / np.sqrt(var) + np.abs(ref).reshape(-1, shape[-1]).max(0) * m2 / (2 * var))
      assert_close_scaled(got, ref, terms=n, scale=y_scale.max(), err_msg=f'step {step}')
      # PyTorch's running variance uses the unbiased batch variance.
      assert_close_scaled(np.asarray(bn.var[...]), torch_bn.running_var.numpy(), terms=n,
                          scale=m2.max(), rtol=2 * U * (step + 1))
      assert_close_scaled(np.asarray(bn.mean[...]), torch_bn.running_mean.numpy(), terms=n,
                          scale=m1.max(), rtol=2 * U * (step + 1))


def test_bot_train_mode_outputs_and_running_stats_match_torch():
  tm = randomize_(TorchBoT(11, depth=18, width=8), seed=7).train()
  cfg = ml_collections.ConfigDict(dict(name='baseline', depth=18, width=8, stem_relu=False,
                                       last_stride=1))
  model = nnx.eval_shape(lambda: models.build_model(cfg, 11))
  load_torch_weights(model, numpy_state_dict(tm))
  model.train()
  keys = check_train_mode_parity(tm, model, images(b=8, h=64, w=32, seed=8))
  assert len(keys) == 2 * 21  # 20 BatchNorm2d in ResNet-18 + the BNNeck
