"""Model registry: one builder per method name (``config.model.name``)."""

from __future__ import annotations

from typing import Callable

_BUILDERS: dict[str, Callable] = {}
_LOSSES: dict[str, Callable] = {}


def register(name: str):
  """Decorator: ``@register('apnet') def build(model_config, num_classes, *, rngs) -> nnx.Module``."""

  def wrap(fn):
    if name in _BUILDERS:
      raise ValueError(f'model {name!r} registered twice')
    _BUILDERS[name] = fn
    return fn

  return wrap


def get_builder(name: str) -> Callable:
  if name not in _BUILDERS:
    raise ValueError(f'unknown config.model.name {name!r}; known models: {sorted(_BUILDERS)}')
  return _BUILDERS[name]


def names() -> list[str]:
  return sorted(_BUILDERS)


def register_loss(*names: str):
  """Decorator for a method's training loss, shared by the one training loop:
  ``loss(outputs, labels, loss_config, centers) -> (scalar, dict of scalar metrics)`` where
  ``outputs`` is what the model returns in train mode."""

  def wrap(fn):
    for name in names:
      _LOSSES[name] = fn
    return fn

  return wrap


def get_loss(name: str) -> Callable:
  if name not in _LOSSES:
    raise ValueError(f'no training loss registered for config.model.name {name!r}; '
                     f'known: {sorted(_LOSSES)}')
  return _LOSSES[name]
