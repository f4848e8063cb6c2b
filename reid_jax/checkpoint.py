"""Orbax checkpoints of reid_jax models.

A checkpoint directory is an orbax ``CheckpointManager`` root: one sub-directory per step, each
with named items. Every writer stores at least
  ``model``  the NNX state of the model (params, BatchNorm statistics, frozen params), and
  ``meta``   JSON: ``num_classes``, the model config and where the weights came from,
so ``restore_model`` can rebuild any reid_jax checkpoint, whether it was written by the converter
or by training (which adds ``optimizer``, ``data`` and more items to the same steps).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from reid_jax import fileio, models

if TYPE_CHECKING:  # annotations only: the step runs without ml_collections (bench/gpu_suite.py)
  import ml_collections


def _manager(directory: str, **options) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(fileio.resolve(directory),
                               options=ocp.CheckpointManagerOptions(**options))


def save_model(model: nnx.Module, directory: str, *, num_classes: int,
               model_config: ml_collections.ConfigDict, step: int = 0,
               extra_meta: dict[str, Any] | None = None) -> str:
  """Writes ``model`` as step ``step`` of the checkpoint at ``directory``; returns the step path.

  Orbax writes into a temporary directory and renames it when complete, so an interrupted save
  never leaves a step that looks finished.
  """
  meta = {'num_classes': int(num_classes), 'model': model_config.to_dict(), **(extra_meta or {})}
  with _manager(directory, enable_async_checkpointing=False) as mngr:
    mngr.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave(nnx.state(model)), meta=ocp.args.JsonSave(meta)))
    mngr.wait_until_finished()
  return os.fspath(fileio.resolve(directory) / str(step))


def read_meta(directory: str, step: int | None = None) -> dict[str, Any]:
  _check_directory(directory)
  with _manager(directory) as mngr:
    step = _pick_step(mngr, directory, step)
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def _check_directory(directory: str) -> None:
  """A readable error for a checkpoint path that does not exist or is not a directory."""
  path = fileio.resolve(directory)
  if not path.exists():
    raise FileNotFoundError(f'checkpoint directory {directory!r} does not exist')
  if not path.is_dir():
    raise NotADirectoryError(f'checkpoint {directory!r} is a file; expected the directory '
                             f'written by reid_jax.convert or training (WORKDIR/checkpoints)')


def _pick_step(mngr: ocp.CheckpointManager, directory: str, step: int | None) -> int:
  steps = mngr.all_steps()
  if not steps:
    hint = ''
    if (fileio.resolve(directory) / 'checkpoints').exists():
      hint = f'; for a training workdir pass {directory}/checkpoints'
    raise FileNotFoundError(f'no reid_jax checkpoint under {directory!r} (expected orbax step '
                            f'directories such as {directory}/0 written by reid_jax.convert or '
                            f'training){hint}')
  if step is None:
    return max(steps)
  if step not in steps:
    raise FileNotFoundError(f'checkpoint {directory!r} has no step {step}; it has {sorted(steps)}')
  return step


def restore_model(model_config: ml_collections.ConfigDict, directory: str, *,
                  step: int | None = None) -> nnx.Module:
  """Builds ``model_config``'s model and fills it from the checkpoint (latest step by default).

  The classifier width comes from the checkpoint's ``meta``. A checkpoint of another method
  (``meta['model']['name']``) is refused naming both; one written for another architecture of the
  same method fails with the mismatching variable named.
  """
  _check_directory(directory)
  with _manager(directory) as mngr:
    step = _pick_step(mngr, directory, step)
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    written_for = (meta.get('model') or {}).get('name')
    if written_for and written_for != model_config.name:
      raise ValueError(f'checkpoint {directory!r} holds a {written_for!r} model, but the config '
                       f'builds config.model.name={model_config.name!r}; use the config of the '
                       f'method that wrote it (configs/{written_for}.py for the reid_jax methods)')
    abstract = nnx.eval_shape(lambda: models.build_model(model_config, meta['num_classes']))
    graphdef, abstract_state = nnx.split(abstract)
    # Replicated over this run's devices, whatever topology wrote the checkpoint.
    replicated = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(jax.devices()), ('devices',)), jax.sharding.PartitionSpec())
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract_state)
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(
          model=ocp.args.StandardRestore(target))).model
    except (ValueError, KeyError) as e:
      detail = _mismatch(directory, step, abstract_state) or str(e)
      raise ValueError(f'checkpoint {directory!r} step {step} does not fit model '
                       f'{model_config.name!r} as configured: {detail}') from e
  model = nnx.merge(graphdef, restored)
  model.train()
  return model


def _variable_shapes(tree) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {jax.tree_util.keystr(p, simple=True, separator='/').removesuffix('/value'):
          tuple(v.shape) for p, v in leaves if hasattr(v, 'shape')}


def _mismatch(directory, step: int, abstract_state) -> str | None:
  """The first model variable whose stored shape differs or that is missing, in words."""
  try:
    handlers = {'model': ocp.StandardCheckpointHandler()}
    with ocp.CheckpointManager(fileio.resolve(directory), item_handlers=handlers) as mngr:
      stored = _variable_shapes(mngr.item_metadata(step)['model'])
  except Exception:  # noqa: BLE001  (diagnostics only: fall back to orbax's message)
    return None
  wanted = _variable_shapes(abstract_state)
  for name, shape in wanted.items():
    if name not in stored:
      return f'variable {name} is not in the checkpoint'
    if stored[name] != shape:
      return (f'variable {name} has shape {stored[name]} in the checkpoint but {shape} in the '
              f'model')
  extra = sorted(set(stored) - set(wanted))
  return f'the checkpoint has variables the model lacks: {", ".join(extra[:5])}' if extra else None


def init_from_checkpoint(model: nnx.Module, model_config: ml_collections.ConfigDict,
                         directory: str) -> list[str]:
  """Copies a reid_jax checkpoint's model into ``model`` in place (``config.init_checkpoint``).

  The checkpoint may come from a dataset with another number of identities: classifier variables
  (path containing ``classifier``) whose shape differs keep ``model``'s initial value and are
  returned as ``'path (checkpoint shape -> model shape)'``. Any other shape difference raises a
  ``ValueError`` naming the variable, before anything is changed.
  """
  src = restore_model(model_config, directory)
  src_leaves, src_def = jax.tree_util.tree_flatten_with_path(nnx.state(src))
  dst_leaves, dst_def = jax.tree_util.tree_flatten_with_path(nnx.state(model))
  if src_def != dst_def:
    raise ValueError(f'config.init_checkpoint={directory!r}: its variables differ from the model '
                     f'{model_config.name!r} as configured')
  values, reinitialised = [], []
  for (path, s), (_, d) in zip(src_leaves, dst_leaves):
    name = jax.tree_util.keystr(path, simple=True, separator='/').removesuffix('/value')
    if s.shape == d.shape:
      values.append(s)
    elif 'classifier' in name:
      values.append(d)
      reinitialised.append(f'{name} ({tuple(s.shape)} -> {tuple(d.shape)})')
    else:
      raise ValueError(f'config.init_checkpoint={directory!r}: variable {name} has shape '
                       f'{tuple(s.shape)} in the checkpoint but {tuple(d.shape)} in the model; '
                       f'only classifier variables may differ (another number of identities)')
  nnx.update(model, jax.tree.unflatten(dst_def, values))
  return reinitialised


def committed_steps(directory) -> list[int]:
  """The finished steps of the checkpoint at ``directory`` (none if it does not exist)."""
  if not fileio.resolve(directory).exists():
    return []
  with _manager(directory) as mngr:
    return list(mngr.all_steps())


class TrainCheckpointManager:
  """Training checkpoints: the ``model`` and ``meta`` items of every reid_jax checkpoint plus
  ``train`` (optimizer state, center-loss centres, step) and ``data`` (this process's grain
  iterator position), kept ``keep`` deep, saved asynchronously.

  Orbax commits a step only when all its items are written (temporary directory + rename), so a
  crash mid-save leaves the previous step as the latest. A latest step that fails to restore
  (corrupted on disk) is skipped with a warning in favour of the one before it.
  """

  def __init__(self, directory: str, graphdef, *, keep: int = 3, async_save: bool = True):
    self.directory = fileio.resolve(directory)
    self.graphdef = graphdef
    self._mngr = _manager(self.directory, max_to_keep=keep,
                          enable_async_checkpointing=async_save, create=True)

  def _model_state(self, state):
    return nnx.state(nnx.merge(self.graphdef, state['params'], state['rest']))

  def save(self, step: int, state, data_iter, *, meta: dict[str, Any], force: bool = False):
    import grain
    args = ocp.args.Composite(
        model=ocp.args.StandardSave(self._model_state(state)),
        train=ocp.args.StandardSave({k: state[k] for k in ('opt_state', 'extra', 'step')}),
        meta=ocp.args.JsonSave(meta),
        data=grain.checkpoint.CheckpointSave(data_iter))
    self._mngr.save(step, args=args, force=force)

  def restore_latest(self, state, data_iter):
    """``(state, step)`` from the newest readable step, or ``(state, 0)`` when there is none."""
    import grain
    from absl import logging
    # A step that fails part-way may already have moved the live iterator (orbax restores the
    # items one by one): put it back before trying the next step.
    initial_data_state = data_iter.get_state()
    for step in sorted(self._mngr.all_steps(), reverse=True):
      model_target = _abstract(self._model_state(state))
      train_target = _abstract({k: state[k] for k in ('opt_state', 'extra', 'step')})
      try:
        restored = self._mngr.restore(step, args=ocp.args.Composite(
            model=ocp.args.StandardRestore(model_target),
            train=ocp.args.StandardRestore(train_target),
            data=grain.checkpoint.CheckpointRestore(data_iter)))
      except Exception as e:  # noqa: BLE001  (any unreadable step: fall back to an older one)
        logging.warning('checkpoint step %d in %s is unreadable (%s: %s); moving it aside and '
                        'trying the previous one', step, self.directory, type(e).__name__, e)
        self._quarantine(step)
        data_iter.set_state(initial_data_state)
        continue
      model = nnx.merge(self.graphdef, state['params'], state['rest'])
      nnx.update(model, restored.model)
      _, params, rest = nnx.split(model, nnx.Param, ...)
      return {'params': params, 'rest': rest, **restored.train}, step
    return state, 0

  def _quarantine(self, step: int) -> None:
    """Renames an unreadable step to ``corrupt-<step>-<time>`` so it is neither restored nor in
    the way when training saves that step again."""
    import time
    if jax.process_index() == 0:
      src = self.directory / str(step)
      if src.exists():
        src.rename(self.directory / f'corrupt-{step}-{int(time.time())}')
    multihost_sync = getattr(ocp, 'multihost', None)
    if jax.process_count() > 1 and multihost_sync is not None:
      multihost_sync.sync_global_processes(f'reid_jax_quarantine_{step}')
    self._mngr.reload()

  def reached_preemption(self, step: int) -> bool:
    return self._mngr.reached_preemption(step)

  def wait(self):
    self._mngr.wait_until_finished()

  def close(self):
    self._mngr.close()


def _abstract(tree):
  """Shape/dtype/sharding targets, so restored arrays land where the live ones are."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
      tree)
