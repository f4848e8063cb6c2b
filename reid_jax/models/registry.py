"""The method registry: one ``Method`` per ``config.model.name``.

A method is everything the one training loop (``reid_jax.train``) needs to know about a ReID
method, and nothing the loop has to know by name:

* ``build(model_config, num_classes, *, rngs) -> nnx.Module``: the network. In eval mode
  (``model.eval()``) calling it on images ``[B, H, W, 3]`` returns the test feature, as the
  official ``model.eval()(x)`` does; in train mode it returns whatever its loss needs.
* ``loss(model, batch, *, extra, config, context) -> (objectives, metrics, aux)``: the training
  loss over the whole batch. ``batch`` holds the fields ``batch_fields(config)`` names (always
  ``image [B, H, W, 3]`` and ``label [B]``; ``parsing [B, H, W]``, ``texture [B, T, T, 3]`` ...
  when the method asks for them); the loss calls the (train-mode) model itself, so it may pass
  any of them to the forward. ``objectives`` is a dict of named float32 scalars to minimise
  (``'loss'`` for single-objective methods); ``metrics`` a dict of scalars to log; ``aux`` a
  pytree of per-example arrays ``[B, ...]`` for ``update_extra`` (or None).
* ``init_extra(config, model, num_classes, key)`` (optional): extra training state that is not
  part of the model, e.g. BoT's center-loss centres or a memory bank. It is checkpointed with the
  optimizer state and restored bit-exactly on resume.
* ``update_extra(extra, grads, aux, config) -> extra`` (optional): the extra state's update rule,
  run once per step after the optimizers; ``grads`` maps each objective name to its gradient
  with respect to ``extra`` (float0 for integer leaves), ``aux`` is the loss's ``aux``
  (micro-batches concatenated along axis 0 under gradient accumulation).
* ``optimizer_groups(config) -> tuple[OptimizerGroup, ...]`` (optional): which objective each
  optimizer descends, over which parameters, with which ``config`` section. The default is one
  group ``main`` that minimises ``'loss'`` over every parameter with ``config.optim``. All groups
  take their gradients at the same parameters (one forward pass, one backward pass per
  objective) and their updates are added.
* ``pictures(model, batch, config, directory) -> list[str]`` (optional): PNG pictures of what the
  method predicts (e.g. SAN's textures) for a training batch of host arrays, written into
  ``directory`` (an existing local folder); the loop calls it once after training.
* ``check_data(config, info) -> None`` (optional): raises when the prepared dataset
  (``reid_jax.data.DatasetInfo``: its ``features``, ...) cannot train the method, with a message
  saying what the method needs (SAN: a texture per image). The loop calls it before building
  anything.

``docs/adding_a_method.md`` walks through adding one (MPN as the example).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

Array = Any


def default_batch_fields(config) -> tuple[str, ...]:
  del config
  return ('image', 'label')


def every_parameter(path: str) -> bool:
  del path
  return True


@dataclasses.dataclass(frozen=True)
class OptimizerGroup:
  """One optimizer of a method.

  Attributes:
    name: the group's name (key of its optimizer state and of its ``lr/<name>`` metric).
    objective: the entry of the loss's ``objectives`` this optimizer descends.
    owns: predicate on a parameter's path (``'head/classifier/kernel'``): the parameters this
      optimizer updates. Several groups may own the same parameter (their updates are added).
    section: the ``config`` section holding its optimizer and schedule (``reid_jax.optim``).
  """
  name: str = 'main'
  objective: str = 'loss'
  owns: Callable[[str], bool] = every_parameter
  section: str = 'optim'


@dataclasses.dataclass(frozen=True)
class StepContext:
  """Where a training step is: int32 scalars, traced (they never cause a recompile)."""
  step: Array        # global step, 0-based
  epoch: Array       # epoch of the batch, 0-based
  epoch_step: Array  # the batch's index within its epoch (0 = the epoch's first batch)


@dataclasses.dataclass(frozen=True)
class Method:
  """A ReID method as the training loop sees it (see the module docstring)."""
  name: str
  build: Callable
  loss: Callable
  batch_fields: Callable[[Any], tuple[str, ...]] = default_batch_fields
  init_extra: Callable | None = None
  update_extra: Callable | None = None
  optimizer_groups: Callable[[Any], tuple[OptimizerGroup, ...]] | None = None
  pictures: Callable | None = None
  check_data: Callable | None = None

  def groups(self, config) -> tuple[OptimizerGroup, ...]:
    groups = tuple(self.optimizer_groups(config)) if self.optimizer_groups else (OptimizerGroup(),)
    names = [g.name for g in groups]
    if not groups or len(set(names)) != len(names):
      raise ValueError(f'method {self.name!r}: optimizer groups must be non-empty with distinct '
                       f'names, got {names}')
    return groups


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
  """Adds ``method`` under ``method.name``; returns it (``METHOD = register_method(Method(...))``)."""
  if method.name in _METHODS:
    raise ValueError(f'method {method.name!r} registered twice')
  _METHODS[method.name] = method
  return method


def get_method(name: str) -> Method:
  if name not in _METHODS:
    raise ValueError(f'unknown config.model.name {name!r}; known methods: {sorted(_METHODS)}')
  return _METHODS[name]


def get_builder(name: str) -> Callable:
  return get_method(name).build


def names() -> list[str]:
  return sorted(_METHODS)
