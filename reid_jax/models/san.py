"""SAN: "Semantics-Aligned Representation Learning for Person Re-identification" (Jin, Lan, Zeng,
Chen; AAAI 2020). Official code: microsoft/Semantics-Aligned-Representation-Learning-for-Person-
Re-identification (``torchreid/models/resnet.py::resnet50_fc512``, ``main.py``); docs/san.md has
the details and our choices.

SA-Enc (``resnet50_fc512``): ResNet-50 (stem ReLU, last stride 1) -> GAP -> ``fc`` = [Linear(2048,
512, bias), BN1d(512), ReLU] -> ``v [B, 512]`` -> ``classifier`` = Linear(512, C, bias). The test
feature is ``v`` (after the ReLU, not normalised).

SA-Dec (``main.py::ConvResDecoder``, training only): from the encoder's ``layer4`` map ``f`` and
its ``layer1..3`` maps ``x_down1..3``, four up-blocks (``ConvResBlock``: residual unit, ReLU, x2
bilinear upsampling with ``align_corners=False``, reflection pad 1, 3x3 conv) with 1x1
conv + BN + ReLU skip embeddings, then reflection pad 3 + a 7x7 conv to 3 channels (no tanh) and a
bilinear resize with ``align_corners=True`` to the texture's ``T x T`` (256). Its maps ``x_sim1..4``
(the up-blocks' raw outputs) carry the decoder's triplet loss.

Training (``main.py::train``): the ReID loss (label-smoothed CE on the logits + batch-hard triplet
on ``v``) descends the encoder; the decoder loss (L1 to the identity's texture + the triplet
regulariser on the decoder maps) descends the decoder with its own Adam and the backbone with a
second Adam. Four optimizer groups: ``warmup`` (Adam, exponential warm-up, epochs 0-19) and ``main``
(AMSGrad, the rest) on the ReID objective over the encoder; ``encoder`` (Adam, backbone only) and
``decoder`` (Adam, decoder only) on the decoder objective.

The official ``close_specified_layers(model, ['fc', 'classifier'])`` (``main.py::train``) closes
``fc`` and ``classifier`` (``fc``'s BN in eval mode, ``requires_grad=False``) just before the
decoder step of every batch, and ``open_all_layers`` reopens them at the end of that batch. The
decoder objective never reaches them and the backbone Adam has no weight decay, so this changes no
number: every layer is trained by the ReID loss at every step
(``config.model.close_head='decoder_step'``, the default, which is also the evident intent).
``'rest_of_epoch'`` keeps them closed from the end of each epoch's first batch until the next
epoch starts, stepped by the optimizers with zero gradients as PyTorch 1.x did (coupled weight
decay and momentum keep moving them, ``fc``'s BN uses and keeps its running statistics): a
reading of the official loop in which the reopening happens only at the epoch start;
docs/san.md.

Images without a texture (``config.input.missing_texture='skip'``: the pipeline yields
``texture_valid [B]``) take no part in the decoder objective: the L1 term averages over the images
that have one, and a decoder-triplet term is dropped when any of its images has none.

Channels-last throughout: maps ``[B, h, w, C]``, textures ``[B, T, T, 3]`` in [-1, 1].
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reid_jax import losses
from reid_jax.models import registry
from reid_jax.models.layers import (BatchNorm, conv, global_avg_pool,
                                    resize_bilinear_align_corners)
from reid_jax.models.mpn import ConvBNReLU
from reid_jax.models.resnet import ResNet, resnet_from_config

Array = jax.Array

DECODER_CHANNELS = (512, 256, 64, 32, 16)  # reduce_dim/up1 in, up2 in, up3 in, up4 in, up4 out
# config.model.close_head: when fc/classifier are closed (module docstring).
CLOSE_HEAD = ('decoder_step', 'rest_of_epoch')
MISSING_TEXTURE = ('error', 'skip')  # config.input.missing_texture
# The decoder triplet's fixed index pattern per level (main.py::train), relative to the group
# start i (i = 0, K, ..., (P-2)K): (anchor, positive, anchor', negative - K). With K = 4: level 1
# (i, i+1 | i, i+4), level 2 (i+1, i+2 | i+1, i+5), level 3 (i+2, i+3 | i+2, i+6), level 4
# (i, i+3 | i+3, i+4).
TRIPLET_PATTERN = ((0, 1, 0, 0), (1, 2, 1, 1), (2, 3, 2, 2), (0, 3, 3, 0))


# ---------------------------------------------------------------------------- interpolation
def upsample2x_bilinear(x: Array) -> Array:
  """``nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False)`` on ``[B, h, w, C]``."""
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, 2 * h, 2 * w, c), 'bilinear')


def reflect_pad(x: Array, pad: int) -> Array:
  """``nn.ReflectionPad2d(pad)`` on ``[B, h, w, C]``."""
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')


# ---------------------------------------------------------------------------- decoder
class ResidualUnit(nnx.Module):
  """``conv3x3 -> BN -> ReLU -> conv3x3 -> BN`` (no bias; PyTorch ``res.{0,1,3,4}``)."""

  def __init__(self, channels: int, *, dtype=None, rngs: nnx.Rngs):
    self.conv1 = conv(channels, channels, 3, dtype=dtype, rngs=rngs)
    self.bn1 = BatchNorm(channels)
    self.conv2 = conv(channels, channels, 3, dtype=dtype, rngs=rngs)
    self.bn2 = BatchNorm(channels)

  def __call__(self, x: Array) -> Array:
    return self.bn2(self.conv2(jax.nn.relu(self.bn1(self.conv1(x)))))


class ConvResBlock(nnx.Module):
  """``main.py::ConvResBlock``: ``relu(x + res(x))`` -> x2 bilinear (align_corners=False) ->
  ReflectionPad(1) -> conv3x3(in -> out, bias). ``[B, h, w, in] -> [B, 2h, 2w, out]``."""

  def __init__(self, in_features: int, out_features: int, *, dtype=None, rngs: nnx.Rngs):
    self.res = ResidualUnit(in_features, dtype=dtype, rngs=rngs)
    self.conv = conv(in_features, out_features, 3, padding=0, use_bias=True, dtype=dtype,
                     rngs=rngs)

  def __call__(self, x: Array) -> Array:
    r = jax.nn.relu(x + self.res(x))
    return self.conv(reflect_pad(upsample2x_bilinear(r), 1))


def init_decoder_weights(module: nnx.Module, rngs: nnx.Rngs) -> None:
  """``main.py::init_decoder_weights``: conv weights xavier-normal with gain 0.02, conv biases 0,
  BN weights N(1, 0.02^2), BN biases 0."""
  xavier = jax.nn.initializers.variance_scaling(0.02**2, 'fan_avg', 'normal')
  for _, m in nnx.iter_graph(module):
    if isinstance(m, nnx.Conv):
      m.kernel.set_value(xavier(rngs.params(), m.kernel.shape, jnp.float32))
      if m.bias is not None:
        m.bias.set_value(jnp.zeros_like(m.bias.get_value()))
    elif isinstance(m, BatchNorm):
      m.scale.set_value(1 + 0.02 * jax.random.normal(rngs.params(), m.scale.shape, jnp.float32))
      m.bias.set_value(jnp.zeros_like(m.bias.get_value()))


class Decoder(nnx.Module):
  """SA-Dec (``main.py::ConvResDecoder``).

  Args:
    stage_channels: the backbone's ``[stem, layer1, layer2, layer3, layer4]`` channels.
    channels: ``(d0, d1, d2, d3, d4)``, ``(512, 256, 64, 32, 16)`` in the official model:
      ``reduce_dim``/``embed_layer3`` -> d0, ``up1`` d0 -> d1, ``embed_layer2`` -> d1, ``up2`` d1 ->
      d2, ``embed_layer1`` -> d2, ``up3`` d2 -> d3, ``up4`` d3 -> d4, ``final_layer`` d4 -> 3.
    texture_size: ``T``, the side of the predicted texture.

  ``__call__(x_down1, x_down2, x_down3, f) -> (texture [B, T, T, 3], (x_sim1, ..., x_sim4))``,
  with the maps at 2, 4, 8, 16 times ``layer3``'s resolution (the image's /8 ... /1).
  """

  def __init__(self, stage_channels, channels=DECODER_CHANNELS, texture_size: int = 256, *,
               dtype=None, rngs: nnx.Rngs):
    if len(channels) != 5:
      raise ValueError(f'config.model.decoder_channels must have 5 entries, got {channels}')
    c1, c2, c3, c4 = stage_channels[1:]
    d0, d1, d2, d3, d4 = channels
    kw = dict(dtype=dtype, rngs=rngs)
    self.texture_size = texture_size
    self.reduce_dim = ConvBNReLU(c4, d0, **kw)
    self.embed_layer3 = ConvBNReLU(c3, d0, **kw)
    self.up1 = ConvResBlock(d0, d1, **kw)
    self.embed_layer2 = ConvBNReLU(c2, d1, **kw)
    self.up2 = ConvResBlock(d1, d2, **kw)
    self.embed_layer1 = ConvBNReLU(c1, d2, **kw)
    self.up3 = ConvResBlock(d2, d3, **kw)
    self.up4 = ConvResBlock(d3, d4, **kw)
    self.final_layer = conv(d4, 3, 7, padding=0, use_bias=True, **kw)
    init_decoder_weights(self, rngs)

  def __call__(self, x_down1: Array, x_down2: Array, x_down3: Array, f: Array):
    x_sim1 = self.up1(self.embed_layer3(x_down3) + self.reduce_dim(f))
    x_sim2 = self.up2(self.embed_layer2(x_down2) + x_sim1)
    x_sim3 = self.up3(self.embed_layer1(x_down1) + x_sim2)
    x_sim4 = self.up4(x_sim3)
    out = self.final_layer(reflect_pad(x_sim4, 3)).astype(jnp.float32)
    texture = resize_bilinear_align_corners(out, (self.texture_size, self.texture_size))
    return texture, tuple(m.astype(jnp.float32) for m in (x_sim1, x_sim2, x_sim3, x_sim4))


# ---------------------------------------------------------------------------- encoder head
def batch_norm_train_or_eval(bn: BatchNorm, x: Array, eval_mode: Array) -> Array:
  """``bn`` in train mode, or (traced bool ``eval_mode``) in eval mode with its running
  statistics left unchanged: PyTorch's ``bn.eval()`` chosen per step without a recompile."""
  bn.use_running_average = True
  y_eval = bn(x)
  bn.use_running_average = False
  mean, var = bn.mean[...], bn.var[...]
  y_train = bn(x)
  bn.mean[...] = jnp.where(eval_mode, mean, bn.mean[...])
  bn.var[...] = jnp.where(eval_mode, var, bn.var[...])
  return jnp.where(eval_mode, y_eval, y_train)


def stop_gradient_where(module: nnx.Module, frozen: Array) -> None:
  """Replaces ``module``'s parameters by themselves with their gradient cut when ``frozen``
  (``requires_grad_(False)`` chosen per step). Only meaningful inside a gradient trace."""
  params = nnx.state(module, nnx.Param)
  nnx.update(module, jax.tree.map(
      lambda p: jnp.where(frozen, jax.lax.stop_gradient(p), p), params))


class Embedding(nnx.Module):
  """``resnet50_fc512``'s ``fc``: Linear(D, 512, bias) -> BN1d -> ReLU (keys ``fc.0``, ``fc.1``),
  Linear initialised N(0, 0.01^2) with zero bias."""

  def __init__(self, in_features: int, out_features: int = 512, *, rngs: nnx.Rngs):
    self.linear = nnx.Linear(in_features, out_features, use_bias=True,
                             kernel_init=nnx.initializers.normal(stddev=0.01),
                             bias_init=nnx.initializers.zeros, rngs=rngs)
    self.bn = BatchNorm(out_features)

  def __call__(self, x: Array, bn_eval: Array | None = None) -> Array:
    y = self.linear(x)
    y = self.bn(y) if bn_eval is None else batch_norm_train_or_eval(self.bn, y, bn_eval)
    return jax.nn.relu(y)


class SAN(nnx.Module):
  """SA-Enc + SA-Dec (module docstring).

  Eval mode: ``model(x) -> v [B, 512]``, the official ``model.eval()(x)``.
  Train mode: ``model(x, close_head=None) -> {'logits': [B, C], 'v': [B, 512], 'texture':
  [B, T, T, 3], 'x_sim': (x_sim1, ..., x_sim4)}``. ``close_head`` (traced bool): run ``fc``'s BN
  in eval mode and cut the gradient of ``fc`` and ``classifier`` (``close_specified_layers``).
  """

  def __init__(self, backbone: ResNet, num_classes: int, *, feature_dim: int = 512,
               decoder_channels=DECODER_CHANNELS, texture_size: int = 256, rngs: nnx.Rngs):
    self.base = backbone
    self.fc = Embedding(backbone.out_features, feature_dim, rngs=rngs)
    self.classifier = nnx.Linear(feature_dim, num_classes, use_bias=True,
                                 kernel_init=nnx.initializers.normal(stddev=0.01),
                                 bias_init=nnx.initializers.zeros, rngs=rngs)
    self.decoder = Decoder(backbone.stage_channels, decoder_channels, texture_size,
                           dtype=backbone.dtype, rngs=rngs)
    self.use_running_average = False  # flipped by model.eval() / model.train()

  def encode(self, x: Array, close_head: Array | None = None):
    """``(v [B, 512], [stem, x_down1, x_down2, x_down3, f])``."""
    stages = self.base(x, return_stages=True)
    if close_head is not None:
      stop_gradient_where(self.fc, close_head)
    v = self.fc(global_avg_pool(stages[-1]), bn_eval=close_head)
    return v.astype(jnp.float32), stages

  def reconstruct(self, x: Array):
    """``(texture [B, T, T, 3], (x_sim1, ..., x_sim4))`` for images ``x`` (current mode)."""
    _, stages = self.encode(x)
    return self.decoder(*stages[1:])

  def __call__(self, x: Array, close_head: Array | None = None):
    v, stages = self.encode(x, close_head)
    if self.use_running_average:
      return v
    if close_head is not None:
      stop_gradient_where(self.classifier, close_head)
    logits = self.classifier(v.astype(self.classifier.kernel.dtype)).astype(jnp.float32)
    texture, x_sim = self.decoder(*stages[1:])
    return {'logits': logits, 'v': v, 'texture': texture, 'x_sim': x_sim}


def build_san(model_config, num_classes: int, *, rngs: nnx.Rngs) -> SAN:
  get = model_config.get
  if get('last_stride', 1) != 1:
    raise ValueError('SAN needs config.model.last_stride=1: its decoder adds the layer3 and '
                     'layer4 maps, which must have the same resolution')
  close = get('close_head', 'decoder_step')
  if close not in CLOSE_HEAD:
    raise ValueError(f'config.model.close_head must be one of {CLOSE_HEAD}, got {close!r}')
  return SAN(resnet_from_config(model_config, rngs=rngs), num_classes,
             feature_dim=get('feature_dim', 512),
             decoder_channels=tuple(get('decoder_channels', DECODER_CHANNELS)),
             texture_size=get('texture_size', 256), rngs=rngs)


@jax.jit
def _reconstruct(graphdef, state, images):
  model = nnx.merge(graphdef, state)
  model.eval()
  return model.reconstruct(images)


def reconstruct(model: SAN, images) -> tuple[Array, tuple[Array, ...]]:
  """Eval-mode SA-Dec output for images ``[B, H, W, 3]``: ``(texture [B, T, T, 3],
  (x_sim1, x_sim2, x_sim3, x_sim4))``, NHWC float32 (the texture in the target's [-1, 1] scale,
  not clipped). The model's own mode is left unchanged."""
  graphdef, state = nnx.split(model)
  return _reconstruct(graphdef, state, jnp.asarray(images, jnp.float32))


# ---------------------------------------------------------------------------- losses
def decoder_triplet_loss(maps, k: int, margin: float = 0.3,
                         valid: Array | None = None) -> Array:
  """SAN's triplet regulariser on the decoder maps (``main.py::train``).

  ``maps``: ``(x_sim1, ..., x_sim4)``, each ``[B, h, w, C]`` for a P x K batch (identities in
  contiguous groups of K). For level ``l`` and every group start ``i = 0, K, ..., (P-2)K``:
  ``max(0, D(a, p) - D(a', n) + margin)`` with the fixed ``TRIPLET_PATTERN`` indices and ``D`` the
  MSE (mean over h, w, C) between the two samples' maps. Summed (not averaged) over the P - 1
  groups and the four levels. Needs K >= 4 (the official code assumes K = 4).

  ``valid`` (bool ``[B]``, optional): images that have a texture. A term is dropped when any of
  its (up to four) images has none, so such an image takes no part in the decoder objective; the
  remaining terms are summed as before (no renormalisation: the official loss is a sum).
  """
  b = maps[0].shape[0]
  if k < 4 or b % k:
    raise ValueError(f'SAN decoder triplet: needs P x K batches with K >= 4 (the official '
                     f'pattern), got batch {b} with K={k}')
  starts = np.arange(0, b - k, k)  # P - 1 groups
  total = jnp.zeros([], jnp.float32)
  for x, (a, p, a2, n) in zip(maps, TRIPLET_PATTERN):
    x = x.astype(jnp.float32).reshape(b, -1)
    d = lambda i, j: jnp.mean(jnp.square(x[i] - x[j]), axis=-1)  # noqa: E731
    hinge = jnp.maximum(d(starts + a, starts + p) - d(starts + a2, starts + k + n) + margin, 0.0)
    if valid is not None:
      keep = valid[starts + a] & valid[starts + p] & valid[starts + a2] & valid[starts + k + n]
      hinge = jnp.where(keep, hinge, 0.0)
    total += jnp.sum(hinge)
  return total


def texture_requirement(config) -> str:
  """What SAN needs from the data, for the errors that refuse to train without it."""
  return ('SAN trains its decoder to predict a texture for every training image (the person\'s '
          f'{config.model.get("texture_size", 256)}x{config.model.get("texture_size", 256)} UV '
          'texture, config.model.texture_size): synthetic_reid carries one per identity; a real '
          'dataset needs its textures attached when it is prepared (`python -m reid_jax.prepare '
          'NAME --texture_dir=DIR`, docs/san.md), and config.input.texture=True with '
          'config.input.texture_size equal to config.model.texture_size')


def missing_texture_mode(config) -> str:
  mode = config.input.get('missing_texture', 'error')
  if mode not in MISSING_TEXTURE:
    raise ValueError(f'config.input.missing_texture must be one of {MISSING_TEXTURE}, '
                     f'got {mode!r}')
  return mode


def texture_l1(predicted: Array, target: Array, valid: Array | None = None) -> Array:
  """``nn.L1Loss()`` (mean absolute error) between textures ``[B, T, T, 3]``; with ``valid``
  (bool ``[B]``) the mean over the images that have a texture (0 when none has)."""
  error = jnp.abs(predicted.astype(jnp.float32) - target.astype(jnp.float32))
  if valid is None:
    return jnp.mean(error)
  per_image = jnp.mean(error, axis=(1, 2, 3))
  return jnp.sum(jnp.where(valid, per_image, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def san_batch_fields(config) -> tuple[str, ...]:
  """``image``, ``label``, ``texture``, and ``texture_valid`` when textures may be missing
  (``config.input.missing_texture='skip'``)."""
  if not config.input.get('texture'):
    raise ValueError(f'config.input.texture is off. {texture_requirement(config)}')
  if missing_texture_mode(config) == 'skip':
    return ('image', 'label', 'texture', 'texture_valid')
  return ('image', 'label', 'texture')


def san_check_data(config, info) -> None:
  """Refuses, before anything is built, to train on a dataset without textures."""
  san_batch_fields(config)
  if 'texture' not in info.features:
    raise ValueError(f'dataset {config.input.dataset!r} has no textures. '
                     f'{texture_requirement(config)}')


def head_closed(config, context) -> Array | None:
  """The ``close_specified_layers`` switch of this step: True after each epoch's first batch
  under ``close_head='rest_of_epoch'``; None (never closed for the ReID step) under the official
  ``'decoder_step'``."""
  if context is None or config.model.get('close_head', 'decoder_step') == 'decoder_step':
    return None
  return context.epoch_step > 0


def san_loss(model, batch, *, extra, config, context=None):
  """SAN's two objectives from one forward pass (``main.py::train``):

  * ``'reid'``: label-smoothed CE (``config.loss.ce_epsilon``, 0.1) on the logits + batch-hard
    triplet (``triplet_margin``, 0.3) on ``v``;
  * ``'decoder'``: ``rec_weight`` x L1(texture, target) (mean) + ``tr_weight`` x the decoder
    triplet (``decoder_triplet_margin``, 0.3).

  With ``batch['texture_valid']`` (bool ``[B]``), the L1 term is the mean over the images that
  have a texture (0 when none has) and the decoder triplet drops the terms that involve an image
  without one (``decoder_triplet_loss``). ``metrics['texture_valid']`` is their fraction.
  """
  del extra
  c = config.loss
  labels = batch['label']
  out = model(batch['image'], close_head=head_closed(config, context))
  target = batch['texture'].astype(jnp.float32)
  if out['texture'].shape != target.shape:
    raise ValueError(f'SAN: the decoder predicts textures {out["texture"].shape[1:]} but the '
                     f'batch holds {target.shape[1:]}; set config.input.texture_size = '
                     f'config.model.texture_size')
  ce = losses.cross_entropy_label_smooth(out['logits'], labels, c.get('ce_epsilon', 0.1))
  triplet = losses.triplet_loss_batch_hard(out['v'], labels, c.get('triplet_margin', 0.3))
  reid = ce + triplet
  valid = batch.get('texture_valid')
  valid = None if valid is None else valid.astype(bool)
  rec = texture_l1(out['texture'], target, valid)
  tr = decoder_triplet_loss(out['x_sim'], config.input.k, c.get('decoder_triplet_margin', 0.3),
                            valid)
  decoder = c.get('rec_weight', 1.0) * rec + c.get('tr_weight', 1.0) * tr
  metrics = {'loss': reid, 'ce': ce, 'triplet': triplet, 'rec_l1': rec, 'decoder_triplet': tr,
             'decoder': decoder,
             'accuracy': jnp.mean(jnp.argmax(out['logits'], -1) == labels)}
  if valid is not None:
    metrics['texture_valid'] = jnp.mean(valid.astype(jnp.float32))
  return {'reid': reid, 'decoder': decoder}, metrics, None


def is_decoder(path: str) -> bool:
  return path.startswith('decoder/')


def is_encoder(path: str) -> bool:
  return not is_decoder(path)


def is_backbone(path: str) -> bool:
  return path.startswith('base/')


def san_optimizer_groups(config) -> tuple[registry.OptimizerGroup, ...]:
  """``warmup`` (``config.optim_warmup``, when present) and ``main`` (``config.optim``): the ReID
  objective over the encoder (backbone, ``fc``, ``classifier``), each live in its own window of
  epochs; ``encoder`` (``config.optim_encoder``): the decoder objective over the backbone;
  ``decoder`` (``config.optim_decoder``): the decoder objective over the decoder."""
  G = registry.OptimizerGroup
  groups = []
  if config.get('optim_warmup') is not None:
    groups.append(G('warmup', 'reid', is_encoder, 'optim_warmup'))
  groups += [G('main', 'reid', is_encoder, 'optim'),
             G('encoder', 'decoder', is_backbone, 'optim_encoder'),
             G('decoder', 'decoder', is_decoder, 'optim_decoder')]
  return tuple(groups)


# ---------------------------------------------------------------------------- pictures
def _to_uint8(x: np.ndarray, mean=None, std=None) -> np.ndarray:
  x = np.asarray(x, np.float32)
  x = x * np.asarray(std, np.float32) + np.asarray(mean, np.float32) if mean is not None \
      else (x + 1.0) / 2.0
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def san_pictures(model, batch, config, directory, count: int = 8) -> list[str]:
  """``texture_NNNN.png`` for the first ``count`` images of a training batch: the input image
  (un-normalised), the predicted texture (eval mode) and the target texture side by side."""
  from PIL import Image
  images = np.asarray(batch['image'][:count])
  predicted, _ = reconstruct(model, images)
  predicted = np.asarray(predicted)
  paths = []
  for i in range(len(images)):
    t = predicted.shape[1]
    tiles = [Image.fromarray(_to_uint8(images[i], config.input.mean, config.input.std)).resize(
        (t * images.shape[2] // images.shape[1], t), Image.BILINEAR),
             Image.fromarray(_to_uint8(predicted[i])),
             Image.fromarray(_to_uint8(batch['texture'][i]))]
    canvas = Image.new('RGB', (sum(im.width for im in tiles) + 4 * (len(tiles) + 1), t + 8),
                       (255, 255, 255))
    x = 4
    for im in tiles:
      canvas.paste(im, (x, 4))
      x += im.width + 4
    path = os.path.join(directory, f'texture_{i:04d}.png')
    canvas.save(path)
    paths.append(path)
  return paths


METHOD = registry.register_method(registry.Method(
    name='san', build=build_san, loss=san_loss, batch_fields=san_batch_fields,
    optimizer_groups=san_optimizer_groups, pictures=san_pictures, check_data=san_check_data))
