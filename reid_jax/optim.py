"""Optimizers and learning-rate schedules with the semantics of the official PyTorch recipes.

* Weight decay is PyTorch's coupled L2 (added to the gradient before the moments), not AdamW.
* Parameter groups as reid-strong-baseline builds them: every parameter whose name contains
  ``bias`` gets ``lr * bias_lr_factor`` and ``weight_decay_bias``. Frozen parameters (the BNNeck
  bias) are not ``nnx.Param`` and never reach the optimizer.
* Schedules are per epoch, as the official code steps them: ``step_at='epoch_start'`` (BoT: the
  scheduler steps before the first iteration of every epoch) or ``'epoch_end'`` (APNet).
* A schedule may hold only in a window of epochs ``[start_epoch, end_epoch)`` (0 outside it, the
  scheduler counting from ``start_epoch``): a phase of training with its own optimizer, such as
  SAN's warm-up Adam followed by AMSGrad with fresh moments (two optimizer groups).
"""

from __future__ import annotations

import bisect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


def warmup_multistep_factor(last_epoch: int, *, milestones, gamma: float, warmup_epochs: int,
                            warmup_factor: float) -> float:
  """``WarmupMultiStepLR`` (linear warmup) multiplier at scheduler position ``last_epoch``."""
  warm = 1.0
  if last_epoch < warmup_epochs:
    alpha = last_epoch / warmup_epochs
    warm = warmup_factor * (1 - alpha) + alpha
  return warm * gamma ** bisect.bisect_right(list(milestones), last_epoch)


# Scheduler position (``last_epoch``) during epoch ``e`` is ``e + STEP_AT[step_at]``.
STEP_AT = {
    # ``scheduler.step()`` before each epoch's first iteration, PyTorch >= 1.1 (BoT): the
    # constructor already counts as one step, so epoch e runs at position e + 1.
    'epoch_start': 1,
    # ``scheduler.step()`` after each epoch (APNet): epoch e runs at position e.
    'epoch_end': 0,
    # ``scheduler.step()`` at epoch start under PyTorch <= 1.0 (MPN's PyTorch 0.4): the first
    # call moves position -1 to 0, so epoch e runs at position e.
    'epoch_start_torch04': 0,
}


def epoch_learning_rates(optim_config, num_epochs: int) -> np.ndarray:
  """The learning rate in force during each epoch, ``[num_epochs]`` (index 0 = first epoch).

  ``step_at`` says when the official code steps its scheduler (``STEP_AT``). Schedules:
  ``warmup_multistep``, ``multistep``, ``constant`` and ``exponential`` (``ExponentialLR``:
  ``lr * gamma ** last_epoch``). Optional ``start_epoch`` / ``end_epoch``: the rate is 0 outside
  ``[start_epoch, end_epoch)`` and the scheduler's position counts from ``start_epoch`` (a phase
  with its own optimizer, created when the phase begins).
  """
  c = optim_config
  if c.step_at not in STEP_AT:
    raise ValueError(f'config.optim.step_at must be one of {tuple(STEP_AT)}, got {c.step_at!r}')
  offset = STEP_AT[c.step_at]
  start = c.get('start_epoch') or 0
  end = c.get('end_epoch')
  out = []
  for e in range(num_epochs):
    if e < start or (end is not None and e >= end):
      out.append(0.0)
      continue
    last_epoch = e - start + offset
    if c.schedule == 'warmup_multistep':
      factor = warmup_multistep_factor(last_epoch, milestones=c.milestones, gamma=c.gamma,
                                       warmup_epochs=c.warmup_epochs,
                                       warmup_factor=c.warmup_factor)
    elif c.schedule == 'multistep':
      factor = c.gamma ** bisect.bisect_right(list(c.milestones), last_epoch)
    elif c.schedule == 'constant':
      factor = 1.0
    elif c.schedule == 'exponential':
      factor = c.gamma ** last_epoch
    else:
      raise ValueError(f"config.optim.schedule must be 'warmup_multistep', 'multistep', "
                       f"'constant' or 'exponential', got {c.schedule!r}")
    out.append(c.lr * factor)
  return np.asarray(out, np.float64)


def _is_bias(path) -> bool:
  return any('bias' in str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def bias_mask(params) -> Any:
  """A pytree of bools: True where the parameter path names a bias (PyTorch's ``'bias' in key``)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: _is_bias(path), params)


def make_optimizer(optim_config, params) -> optax.GradientTransformation:
  """The recipe's optimizer over ``params`` (an ``nnx.Param`` state), with per-group decay.

  ``adam`` / ``amsgrad``: ``torch.optim.Adam(..., amsgrad)`` with coupled weight decay.
  ``sgd``: ``torch.optim.SGD(momentum, nesterov, weight_decay)``.
  The learning rate is left out: the caller multiplies the updates by ``-lr`` of the current
  epoch (``apply_learning_rate``), because epochs of the P x K sampler differ in length and the
  rate follows the epoch, not the step count. Bias parameters are scaled by ``bias_lr_factor``.
  """
  c = optim_config
  is_bias = bias_mask(params)
  is_weight = jax.tree.map(lambda b: not b, is_bias)
  decay = [optax.add_decayed_weights(c.weight_decay, mask=is_weight),
           optax.add_decayed_weights(c.weight_decay_bias, mask=is_bias)]
  if c.name == 'adam':
    direction = optax.scale_by_adam(b1=c.betas[0], b2=c.betas[1], eps=1e-8)
  elif c.name == 'amsgrad':
    direction = scale_by_torch_amsgrad(b1=c.betas[0], b2=c.betas[1], eps=1e-8)
  elif c.name == 'sgd':
    direction = optax.trace(decay=c.momentum, nesterov=c.nesterov)
  else:
    raise ValueError(f"config.optim.name must be 'adam', 'amsgrad' or 'sgd', got {c.name!r}")
  factor = jax.tree.map(lambda b: c.bias_lr_factor if b else 1.0, is_bias)
  return optax.chain(*decay, direction, _scale_per_leaf(factor))


def apply_learning_rate(updates, lr):
  """``-lr * updates``: gradient descent with the epoch's learning rate."""
  return jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)


def _scale_per_leaf(factors) -> optax.GradientTransformation:
  """Multiplies each update by a constant of its own (the bias learning-rate factor)."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, f: u * f if f != 1.0 else u, updates, factors), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_by_torch_amsgrad(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """AMSGrad as ``torch.optim.Adam(amsgrad=True)``: the running max is taken of the raw second
  moment, then bias-corrected: ``m_hat / (sqrt(max_v) / sqrt(1 - b2^t) + eps)``."""

  def init(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return {'count': jnp.zeros([], jnp.int32), 'mu': zeros(), 'nu': zeros(), 'nu_max': zeros()}

  def update(updates, state, params=None):
    del params
    count = state['count'] + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state['mu'], updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state['nu'], updates)
    nu_max = jax.tree.map(jnp.maximum, state['nu_max'], nu)
    t = count.astype(jnp.float32)
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    out = jax.tree.map(lambda m, v: (m / bc1) / (jnp.sqrt(v) / jnp.sqrt(bc2) + eps), mu, nu_max)
    return out, {'count': count, 'mu': mu, 'nu': nu, 'nu_max': nu_max}

  return optax.GradientTransformation(init, update)
