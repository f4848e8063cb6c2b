"""BoT strong baseline (Luo et al. 2019): ResNet (last stride 1, no stem ReLU) -> GAP -> BNNeck -> classifier.

Official code: michuanhaohao/reid-strong-baseline ``modeling/baseline.py``. The BNNeck is a BatchNorm1d whose bias is frozen at 0; the classifier has no bias and
is initialised N(0, 0.001²).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from reid_jax import losses
from reid_jax.models import registry
from reid_jax.models.layers import BatchNorm, global_avg_pool
from reid_jax.models.resnet import ResNet, resnet_from_config

Array = jax.Array


class BNNeckHead(nnx.Module):
  """GAP feature ``[B, D]`` -> BNNeck (BN1d, frozen zero bias) -> linear classifier (no bias).

  ``neck_feat='after'`` makes the test feature the BN output, ``'before'`` the GAP feature.
  """

  def __init__(self, in_features: int, num_classes: int, *, neck_feat: str = 'after',
               rngs: nnx.Rngs):
    if neck_feat not in ('after', 'before'):
      raise ValueError(f"config.model.neck_feat must be 'after' or 'before', got {neck_feat!r}")
    self.neck_feat = neck_feat
    self.bottleneck = BatchNorm(in_features, bias='frozen')
    self.classifier = nnx.Linear(
        in_features, num_classes, use_bias=False,
        kernel_init=nnx.initializers.normal(stddev=0.001), rngs=rngs)

  def __call__(self, global_feat: Array, *, train: bool):
    feat = self.bottleneck(global_feat)
    if train:
      return {'logits': self.classifier(feat).astype(jnp.float32),
              'global_feat': global_feat.astype(jnp.float32)}
    return feat if self.neck_feat == 'after' else global_feat


class Baseline(nnx.Module):
  """The BoT model.

  Train mode (``model.train()``): ``x [B, H, W, 3] -> {'logits': [B, num_classes],
  'global_feat': [B, D]}`` (triplet and center losses act on the pre-BN ``global_feat``).
  Eval mode (``model.eval()``): ``x -> [B, D]`` test feature, as the official ``model.eval()(x)``.
  """

  def __init__(self, backbone: ResNet, num_classes: int, *, neck_feat: str = 'after',
               rngs: nnx.Rngs):
    self.base = backbone
    self.head = BNNeckHead(backbone.out_features, num_classes, neck_feat=neck_feat, rngs=rngs)
    self.use_running_average = False  # flipped by model.eval() / model.train()

  def __call__(self, x: Array):
    return self.head(global_avg_pool(self.base(x)), train=not self.use_running_average)


def build_baseline(model_config, num_classes: int, *, rngs: nnx.Rngs) -> Baseline:
  return Baseline(resnet_from_config(model_config, rngs=rngs), num_classes,
                  neck_feat=model_config.get('neck_feat', 'after'), rngs=rngs)


def bnneck_loss(model, batch, *, extra, config, context=None):
  """BoT/APNet loss: label-smoothed CE on the logits + batch-hard triplet on the pre-BN feature
  (+ ``center_weight`` x center loss on it, the centres being ``extra['centers']``).

  BoT ``layers/__init__.py::make_loss_with_center``; APNet ``layers/__init__.py``.
  Returns ``({'loss': total}, metrics, None)``.
  """
  del context
  loss_config = config.loss
  labels = batch['label']
  outputs = model(batch['image'])
  ce = losses.cross_entropy_label_smooth(outputs['logits'], labels, loss_config.ce_epsilon,
                                         loss_config.get('ce_num_classes'))
  margin = None if loss_config.triplet_soft_margin else loss_config.triplet_margin
  triplet = losses.triplet_loss_batch_hard(outputs['global_feat'], labels, margin)
  total = ce + triplet
  metrics = {'ce': ce, 'triplet': triplet,
             'accuracy': jnp.mean(jnp.argmax(outputs['logits'], -1) == labels)}
  if extra is not None:
    center = losses.center_loss(outputs['global_feat'], labels, extra['centers'])
    total = total + loss_config.center_weight * center
    metrics['center'] = center
  metrics['loss'] = total
  return {'loss': total}, metrics, None


def init_centers(config, model, num_classes: int, key):
  """BoT's center-loss centres ``[num_classes, D]`` (randn, as its ``CenterLoss``) in the space of
  the train-mode ``global_feat``; None without center loss."""
  if not config.loss.get('center_weight'):
    return None
  h, w = config.input.size
  out = nnx.eval_shape(lambda m: m(jnp.zeros((2, h, w, 3))), model)
  dim = out['global_feat'].shape[-1]
  return {'centers': jax.random.normal(key, (num_classes, dim), jnp.float32)}


def update_centers(extra, grads, aux, config):
  """BoT: the centres' gradient is rescaled by ``1 / center_weight``, then SGD(``center_lr``)."""
  del aux
  centers = extra['centers']
  g = grads['loss']['centers']
  return {'centers': centers - config.optim.center_lr * g / config.loss.center_weight}


METHOD = registry.register_method(registry.Method(
    name='baseline', build=build_baseline, loss=bnneck_loss, init_extra=init_centers,
    update_extra=update_centers))
