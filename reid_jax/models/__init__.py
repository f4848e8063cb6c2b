"""reid_jax models: one backbone package (``resnet``, ``hrnet``), one file per method, a registry by name.

Stable API:
  build_model(model_config, num_classes, seed=0) -> nnx.Module
  get_method(name) -> Method (builder, training loss, extra state, optimizer groups)
  embed(model, images_nhwc) -> [B, D] test feature (eval mode; no flip, no L2 normalisation), or
    for part-based methods (BPBreID, DROP) {'feat': [B, P, D], 'visibility': [B, P]}
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from reid_jax.models import apnet  # noqa: F401  (registers 'apnet')
from reid_jax.models import bot  # noqa: F401  (registers 'baseline')
from reid_jax.models import bpbreid  # noqa: F401  (registers 'bpbreid')
from reid_jax.models import drop  # noqa: F401  (registers 'drop')
from reid_jax.models import mpn  # noqa: F401  (registers 'mpn')
from reid_jax.models import san  # noqa: F401  (registers 'san')
from reid_jax.models.registry import (Method, OptimizerGroup, StepContext, get_builder,  # noqa: F401
                                      get_method, names, register_method)
from reid_jax.models.resnet import ResNet  # noqa: F401


def build_model(model_config, num_classes: int, seed: int = 0) -> nnx.Module:
  """Builds ``config.model.name`` with ``num_classes`` classifier rows, in train mode."""
  model = get_builder(model_config.name)(model_config, num_classes, rngs=nnx.Rngs(seed))
  model.train()
  return model


@jax.jit
def _embed(graphdef, state, images):
  model = nnx.merge(graphdef, state)  # a fresh copy: switching it to eval leaves the caller's alone
  model.eval()
  return model(images)


def embed(model: nnx.Module, images):
  """The method's test feature ``[B, D]`` for images ``[B, H, W, 3]`` (normalised float32).

  Part-based methods (BPBreID, DROP) return ``{'feat': [B, P, D], 'visibility': [B, P]}``: P
  embeddings per image (BPBreID: ``bn_foreg`` then the K parts) and their visibility (bool, or
  float scores when continuous), compared with ``reid_jax.evaluation``'s part distance.

  Runs the model in eval mode, exactly as the official ``model.eval()(x)``: no flip and no L2
  normalisation (those are evaluation settings, see ``reid_jax.evaluation``). The model's own
  train/eval mode is left unchanged.
  """
  graphdef, state = nnx.split(model)
  return _embed(graphdef, state, jnp.asarray(images, jnp.float32))
