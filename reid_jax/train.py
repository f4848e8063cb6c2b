"""The one training loop every method plugs into.

A method contributes a ``registry.Method`` (model builder, training loss over the whole batch,
optional extra state and optimizer groups; ``reid_jax.models.registry``); everything else is
shared: the P x K input pipeline, the PyTorch-exact optimizer and per-epoch learning rate, the
sharded jitted step, orbax checkpoints with exact resume and preemption, clu logging and periodic
evaluation.

Functional NNX: the model is split once into ``graphdef`` + state; the step is a pure
``jax.jit`` function of a state pytree (donated), merged back into a module only inside the step,
for evaluation and for checkpoints.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from reid_jax import checkpoint as ckpt_lib
from reid_jax import fileio
from reid_jax import models, optim, xla_options
from reid_jax.models import registry

if TYPE_CHECKING:  # annotations only: the step runs without ml_collections (bench/gpu_suite.py)
  import ml_collections

TrainState = dict[str, Any]  # params, rest, opt_state, extra, step


# ----------------------------------------------------------------------------------- mesh
def make_mesh(config) -> jax.sharding.Mesh:
  """``config.mesh``: ``(('data', -1),)`` or ``(('data', -1), ('fsdp', n))``; -1 = the rest.

  Axis types are ``Auto``: batch-global losses (triplet, center) need no annotations.
  """
  names = tuple(n for n, _ in config.mesh)
  sizes = [s for _, s in config.mesh]
  if any(n not in ('data', 'fsdp') for n in names):
    raise ValueError(f"config.mesh axes must be 'data' and optionally 'fsdp', got {names}")
  n = jax.device_count()
  known = int(np.prod([s for s in sizes if s != -1]))
  sizes = [n // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != n:
    raise ValueError(f'config.mesh {config.mesh} does not cover the {n} devices')
  return jax.make_mesh(tuple(sizes), names,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def batch_axes(mesh) -> tuple[str, ...]:
  return tuple(a for a in ('data', 'fsdp') if a in mesh.axis_names)


def param_sharding(mesh, x) -> NamedSharding:
  """Replicated, or with an ``fsdp`` axis the largest divisible dimension split over it."""
  if 'fsdp' not in mesh.axis_names or not hasattr(x, 'shape') or x.ndim == 0:
    return NamedSharding(mesh, P())
  n = mesh.shape['fsdp']
  dims = [d for d in np.argsort(x.shape)[::-1] if x.shape[d] % n == 0 and x.shape[d] >= n]
  if not dims or x.size < 2**14:  # small tensors: sharding costs more than it saves
    return NamedSharding(mesh, P())
  spec = [None] * x.ndim
  spec[dims[0]] = 'fsdp'
  return NamedSharding(mesh, P(*spec))


# ----------------------------------------------------------------------------------- state
def _path_name(path) -> str:
  """``'head/classifier/kernel'`` for a parameter's pytree path (the Variable's ``.value`` left
  out)."""
  parts = [str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path]
  if parts and isinstance(path[-1], jax.tree_util.GetAttrKey) and parts[-1] == 'value':
    parts.pop()
  return '/'.join(parts)


class Optimizers:
  """The method's optimizer groups (``registry.OptimizerGroup``) over one parameter tree.

  Each group runs its ``reid_jax.optim`` optimizer on the flat ``{path: array}`` dict of the
  parameters it owns; ``init(params)`` gives ``{group: state}``.
  """

  def __init__(self, groups, config, params):
    self.groups = groups
    leaves, self._treedef = jax.tree_util.tree_flatten_with_path(params)
    self.paths = [_path_name(p) for p, _ in leaves]
    self.owned = {}
    self.tx = {}
    for g in groups:
      owned = [p for p in self.paths if g.owns(p)]
      if not owned:
        raise ValueError(f'optimizer group {g.name!r} owns no parameter')
      if g.section not in config:
        raise ValueError(f'optimizer group {g.name!r} reads config.{g.section}, which is missing')
      self.owned[g.name] = owned
      self.tx[g.name] = optim.make_optimizer(config[g.section], self.select(params, owned))

  def flat(self, tree) -> dict[str, Any]:
    return dict(zip(self.paths, jax.tree.leaves(tree)))

  def select(self, tree, owned) -> dict[str, Any]:
    flat = self.flat(tree)
    return {p: flat[p] for p in owned}

  def init(self, params) -> dict[str, Any]:
    return {g.name: self.tx[g.name].init(self.select(params, self.owned[g.name]))
            for g in self.groups}

  def apply(self, params, grads, opt_state, lrs):
    """New ``(params, opt_state)``: every group's update from the gradient of its objective at
    ``params``, scaled by its learning rate, added. A group whose learning rate is 0 neither
    moves its parameters nor advances its state (phases such as SAN's warm-up optimizer)."""
    total = {}
    new_state = {}
    for g in self.groups:
      owned = self.owned[g.name]
      lr = lrs[g.name]
      updates, state = self.tx[g.name].update(self.select(grads[g.objective], owned),
                                              opt_state[g.name], self.select(params, owned))
      if len(self.groups) > 1:
        active = lr != 0
        state = jax.tree.map(lambda new, old: jnp.where(active, new, old), state,
                             opt_state[g.name])
      new_state[g.name] = state
      for p, u in optim.apply_learning_rate(updates, lr).items():
        total[p] = u if p not in total else total[p] + u
    flat = self.flat(params)
    new = [flat[p] + total[p] if p in total else flat[p] for p in self.paths]
    return jax.tree.unflatten(self._treedef, new), new_state

  def learning_rates(self, config, num_epochs: int) -> dict[str, np.ndarray]:
    """``{group: [num_epochs]}``: the learning rate in force during each epoch."""
    return {g.name: optim.epoch_learning_rates(config[g.section], num_epochs)
            for g in self.groups}


def init_state(config, num_classes: int, mesh, *,
               fresh: bool = True) -> tuple[nnx.GraphDef, TrainState, Optimizers]:
  """Builds the model, its optimizers and extra state; returns ``(graphdef, state, optimizers)``.

  ``state = {'params', 'rest', 'opt_state': {group: ...}, 'extra', 'step'}``, placed on ``mesh``.
  ``fresh``: a run that starts from scratch, whose initial weights come from
  ``config.init_checkpoint`` or ``config.model.pretrained`` (``load_initial_weights``); a resumed
  run passes False and reads neither (its checkpoint replaces every value).
  """
  method = registry.get_method(config.model.name)
  model = models.build_model(config.model, num_classes, seed=config.seed)
  if fresh:
    load_initial_weights(model, config)
  extra = None
  if method.init_extra is not None:
    extra = method.init_extra(config, model, num_classes, jax.random.key(config.seed + 1))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  optimizers = Optimizers(method.groups(config), config, params)
  state = {'params': params, 'rest': rest, 'opt_state': optimizers.init(params), 'extra': extra,
           'step': jnp.zeros([], jnp.int32)}
  state = jax.device_put(state, jax.tree.map(lambda x: param_sharding(mesh, x), state))
  return graphdef, state, optimizers


def load_initial_weights(model: nnx.Module, config) -> None:
  """The initial weights of a fresh run, in place.

  * ``config.init_checkpoint = DIR`` (a reid_jax checkpoint: training or ``reid_jax.convert``):
    the whole model; classifier variables of another width (another dataset) keep their init,
    reported. It wins over ``config.model.pretrained``, which is then not read (logged).
  * ``config.model.pretrained = FILE`` (a PyTorch backbone checkpoint, e.g. torchvision's
    ``resnet50-19c8e357.pth``): the backbone ``model.base`` only
    (``reid_jax.convert.load_backbone``); the heads keep their init.
  * neither, on a real benchmark: a warning (published numbers start from ImageNet weights).
  """
  from reid_jax.convert import load_backbone, load_torch_checkpoint
  init_checkpoint = config.get('init_checkpoint')
  pretrained = config.model.get('pretrained')
  if init_checkpoint:
    if pretrained:
      logging.info('config.init_checkpoint=%s holds the whole model: config.model.pretrained=%s '
                   'is not read', init_checkpoint, pretrained)
    reinitialised = ckpt_lib.init_from_checkpoint(model, config.model, init_checkpoint)
    logging.info('initialised from %s', init_checkpoint)
    if reinitialised:
      logging.warning('config.init_checkpoint=%s was trained with another number of classes: '
                      're-initialised %s', init_checkpoint, ', '.join(reinitialised))
  elif pretrained:
    state_dict = load_torch_checkpoint(pretrained)
    try:
      report = load_backbone(model, state_dict)
    except (KeyError, ValueError) as e:
      text = e.args[0] if isinstance(e, KeyError) and e.args else e
      raise ValueError(f'config.model.pretrained={pretrained}: {text}') from e
    logging.info('config.model.pretrained: loaded %d tensors from %s into model.base%s; %d '
                 'unused keys%s%s', len(report.loaded), pretrained,
                 f' (keys under {report.prefix!r})' if report.prefix else '', len(report.unused),
                 f': {", ".join(report.unused[:20])}' if report.unused else '',
                 f'; not in the file, kept at their initial value: {", ".join(report.absent)}'
                 if report.absent else '')
  elif not config.input.dataset.startswith('synthetic_reid'):
    logging.warning('training %s from random weights: published results start from an ImageNet '
                    'backbone; set --config.model.pretrained=FILE (e.g. torchvision '
                    'resnet50-19c8e357.pth, see README "ImageNet initialisation")',
                    config.input.dataset)


def make_train_step(graphdef, optimizers: Optimizers, config, mesh):
  """A jitted ``(state, batch, lr, context=None) -> (state, metrics)`` with the state donated.

  ``batch`` holds the method's ``batch_fields``; ``lr`` is a scalar (every optimizer group) or
  ``{group: scalar}``; ``context`` is ``{'epoch', 'epoch_step'}`` int32 scalars (0 if omitted).
  ``config.grad_accum_steps = n > 1`` splits the batch into ``n`` consecutive micro-batches
  (each must hold whole identities: ``P*K/n`` a multiple of K) and averages their gradients;
  BatchNorm statistics are updated micro-batch after micro-batch. Triplet mining then sees one
  micro-batch at a time, as it would on a smaller device.
  """
  del mesh
  method = registry.get_method(config.model.name)
  objectives_of = sorted({g.objective for g in optimizers.groups})
  accum = int(config.get('grad_accum_steps', 1) or 1)
  if accum > 1 and (config.input.p * config.input.k) % (accum * config.input.k):
    raise ValueError(f'config.grad_accum_steps={accum} must split the P*K batch into whole '
                     f'identities (P={config.input.p} divisible by {accum})')

  def forward(params, extra, rest, batch, context):
    # NNX variables may only be mutated in the trace that created them: rebuild the BN-stat
    # variables inside the gradient trace (tree.map unflattens into fresh Variable objects).
    model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
    objectives, metrics, aux = method.loss(model, batch, extra=extra, config=config,
                                           context=context)
    missing = [o for o in objectives_of if o not in objectives]
    if missing:
      raise ValueError(f'method {method.name!r}: its loss returned objectives {sorted(objectives)}'
                       f', but optimizer groups descend {missing}')
    _, _, rest = nnx.split(model, nnx.Param, ...)
    return {o: objectives[o] for o in objectives_of}, (metrics, aux, rest)

  def gradients(params, extra, rest, batch, context):
    """``{objective: (grad params, grad extra)}``, metrics, aux, new rest: one forward pass and
    one backward pass per objective."""
    objectives, vjp_fn, (metrics, aux, rest) = jax.vjp(
        lambda p, e: forward(p, e, rest, batch, context), params, extra, has_aux=True)
    grads = {}
    for o in objectives_of:
      cotangent = {k: jnp.ones_like(v) if k == o else jnp.zeros_like(v)
                   for k, v in objectives.items()}
      grads[o] = vjp_fn(cotangent)
    return grads, metrics, aux, rest

  def accumulated(state, batch, context):
    if accum == 1:
      return gradients(state['params'], state['extra'], state['rest'], batch, context)
    micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

    def body(carry, mb):
      grads_sum, rest = carry
      grads, metrics, aux, rest = gradients(state['params'], state['extra'], rest, mb, context)
      return (jax.tree.map(_add, grads_sum, grads), rest), (metrics, aux)

    zeros = {o: jax.tree.map(_zeros_like, (state['params'], state['extra']))
             for o in objectives_of}
    (grads, rest), (metrics, aux) = jax.lax.scan(body, (zeros, state['rest']), micro)
    grads = jax.tree.map(lambda g: g / accum if g.dtype != jax.dtypes.float0 else g, grads)
    aux = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), aux)
    return grads, jax.tree.map(jnp.mean, metrics), aux, rest

  def step(state, batch, lr, context=None):
    if context is None:
      context = {'epoch': jnp.zeros([], jnp.int32), 'epoch_step': jnp.zeros([], jnp.int32)}
    ctx = registry.StepContext(step=state['step'], epoch=context['epoch'],
                               epoch_step=context['epoch_step'])
    lrs = lr if isinstance(lr, dict) else {g.name: lr for g in optimizers.groups}
    grads, metrics, aux, rest = accumulated(state, batch, ctx)
    params, opt_state = optimizers.apply(state['params'], {o: g[0] for o, g in grads.items()},
                                         state['opt_state'], lrs)
    extra = state['extra']
    if method.update_extra is not None and extra is not None:
      extra = method.update_extra(extra, {o: g[1] for o, g in grads.items()}, aux, config)
    metrics = dict(metrics)
    if len(optimizers.groups) == 1:
      metrics['lr'] = lrs[optimizers.groups[0].name]
    else:
      metrics.update({f'lr/{name}': v for name, v in lrs.items()})
    new_state = {'params': params, 'rest': rest, 'opt_state': opt_state, 'extra': extra,
                 'step': state['step'] + 1}
    return new_state, metrics

  return jax.jit(step, donate_argnums=0, compiler_options=xla_options.cpu_compiler_options())


def _add(a, b):
  return a if a.dtype == jax.dtypes.float0 else a + b


def _zeros_like(x):
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.zeros_like(x)
  return np.zeros(x.shape, jax.dtypes.float0)


def model_from_state(graphdef, state) -> nnx.Module:
  return nnx.merge(graphdef, state['params'], state['rest'])


# ----------------------------------------------------------------------------------- data
def put_batch(mesh, batch: dict[str, np.ndarray],
              fields: tuple[str, ...] = ('image', 'label')) -> dict[str, jax.Array]:
  """This process's slice of the global batch -> global arrays sharded over the batch axes.

  Only ``fields`` (the method's ``batch_fields``) are sent to the devices; a missing one is an
  error naming the config switch that yields it.
  """
  missing = [f for f in fields if f not in batch]
  if missing:
    raise ValueError(f'the method needs batch fields {missing} that the input pipeline does not '
                     f'yield; enable them with config.input.<field>=True (e.g. '
                     f'config.input.parsing) on a dataset that has them')
  sharding = NamedSharding(mesh, P(batch_axes(mesh)))
  return {k: jax.make_array_from_process_local_data(sharding, batch[k]) for k in fields}


# ----------------------------------------------------------------------------------- eval
def evaluate_model(model: nnx.Module, config, mesh, *, data_dir=None,
                   pictures_dir: str | None = None) -> dict[str, Any]:
  """Query/gallery features of ``model`` and the ReID metrics under ``config.eval``.

  With ``pictures_dir`` and ``config.eval.pictures > 0``, also writes the ranked lists of the
  first ``pictures`` queries and the CMC curve there as PNG.
  """
  from reid_jax import data, evaluation
  from reid_jax.extract import extract_features
  feats = {}
  for split in ('query', 'gallery'):
    batches = data.eval_batches(config.input, split, batch_size=config.input.eval_batch_size,
                                multiple_of=jax.device_count(), data_dir=data_dir)
    feats[split] = extract_features(model, batches, flip=config.eval.flip,
                                    normalize=config.eval.normalize, with_index=True)
  (qf, qp, qc, qi), (gf, gp, gc, gi) = feats['query'], feats['gallery']
  c = config.eval
  kw = dict(metric=c.metric, max_rank=c.max_rank, ap=c.ap, block_size=c.block_size, mesh=mesh,
            part_combine=c.get('part_combine', 'mean'))
  results = evaluation.evaluate(qf, gf, qp, gp, qc, gc, **kw)
  if c.rerank:
    rerank = c.rerank if isinstance(c.rerank, str) else dict(
        k1=c.rerank_k1, k2=c.rerank_k2, lambda_value=c.rerank_lambda)
    results = dict(results, reranked=evaluation.evaluate(qf, gf, qp, gp, qc, gc, rerank=rerank,
                                                         **kw))
  if pictures_dir and c.get('pictures', 0) > 0 and jax.process_index() == 0:
    write_pictures(pictures_dir, config, data_dir, results, (qf, qp, qc, qi), (gf, gp, gc, gi))
  return results


class _LazyImages:
  """Gallery images decoded on first access (a ranked list shows only its top k)."""

  def __init__(self, config_input, split, indices, data_dir):
    self._args = (config_input, split, data_dir)
    self._indices = indices
    self._cache = {}

  def __getitem__(self, j):
    if j not in self._cache:
      config_input, split, data_dir = self._args
      from reid_jax import data
      self._cache[j] = data.raw_images(config_input, split, [self._indices[j]], data_dir)[0]
    return self._cache[j]


def write_pictures(target_dir, config, data_dir, results, query, gallery) -> None:
  with fileio.LocalStaging(target_dir) as directory:
    _draw_pictures(directory, config, data_dir, results, query, gallery)


def _draw_pictures(directory, config, data_dir, results, query, gallery) -> None:
  from reid_jax import data, evaluation
  from reid_jax.evaluation import visualize
  from reid_jax.evaluation import features as feature_lib
  qf, qp, qc, qi = query
  gf, gp, gc, gi = gallery
  n = min(config.eval.pictures, feature_lib.num_rows(qf))
  # Part features: the no-common-part value is this sub-matrix's max + 1; the order is the same.
  dist = np.asarray(evaluation.distance_matrix(
      feature_lib.map_rows(lambda a: a[:n], qf), gf, config.eval.metric,
      part_combine=config.eval.get('part_combine', 'mean')))
  q_images = data.raw_images(config.input, 'query', qi[:n], data_dir)
  g_images = _LazyImages(config.input, 'gallery', gi, data_dir)
  size = tuple(config.input.size)
  for i in range(n):
    visualize.ranked_list(q_images[i], g_images, dist[i], qp[i], qc[i], gp, gc,
                          os.path.join(directory, f'rank_query{i:04d}.png'), size=size)
  visualize.cmc_curve(results['cmc'], os.path.join(directory, 'cmc.png'),
                      label=f'{config.model.name} on {config.input.dataset}')


def summary(results: dict[str, Any], prefix: str = '') -> dict[str, float]:
  """R1/R5/R10/mAP/mINP in percent, flat, for writers and JSON."""
  cmc = np.asarray(results['cmc'])
  out = {f'{prefix}R1': 100 * float(cmc[0]), f'{prefix}R5': 100 * float(cmc[min(4, len(cmc) - 1)]),
         f'{prefix}R10': 100 * float(cmc[min(9, len(cmc) - 1)]),
         f'{prefix}mAP': 100 * float(results['mAP']), f'{prefix}mINP': 100 * float(results['mINP'])}
  if 'reranked' in results:
    out.update(summary(results['reranked'], prefix + 'rerank_'))
  return out


def ensure_prepared(dataset: str, data_dir: str | None) -> str:
  """Builds the synthetic dataset on first use; for a real benchmark that is not built yet,
  says where to get it and which ``prepare`` command builds it."""
  from reid_jax import prepare
  name, _ = prepare.split_name(dataset)
  cls = prepare.builder_class(name)
  if not getattr(cls, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
    return prepare.prepare(dataset, data_dir=data_dir)
  root = data_dir or prepare.default_data_dir()
  builder = cls(data_dir=root, config=prepare.split_name(dataset)[1])
  if not os.path.exists(os.path.join(builder.data_path, 'dataset_info.json')):
    raise FileNotFoundError(
        f'dataset {dataset!r} is not prepared under {root}. Download it by hand (see '
        f'docs/datasets.md and datasets/{name}/README.md), then run:\n  python -m reid_jax.prepare '
        f'{dataset} --manual_dir=RAW_FOLDER --data_dir={root}\n'
        f'and pass --config.input.data_dir={root} if that is not the TFDS default.')
  return os.fspath(builder.data_path)


# ----------------------------------------------------------------------------------- loop
class _Preemption:
  """SIGTERM sets a flag; the loop saves at the next step and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class NonFiniteLossError(ValueError):
  """Training produced a non-finite loss; the message names the step and the loss terms."""


class _FiniteGuard:
  """Stops training at the first non-finite metric (loss terms, learning rate).

  The step's metrics stay on the device until ``check`` (called before every checkpoint save,
  evaluation and log line): the loop never waits for a step just to look at its loss. ``check``
  fetches the pending scalars at once and raises ``NonFiniteLossError`` for the first non-finite
  step, after letting the checkpoint saves already under way finish (they hold finite values).
  """

  def __init__(self, manager):
    self.manager = manager
    self.pending = []

  def add(self, step: int, epoch: int, metrics) -> None:
    self.pending.append((step, epoch, metrics))

  def check(self) -> None:
    pending, self.pending = jax.device_get(self.pending), []
    for step, epoch, metrics in pending:
      values = {k: float(v) for k, v in metrics.items()}
      if all(np.isfinite(v) for v in values.values()):
        continue
      self.manager.wait()
      latest = ckpt_lib.committed_steps(self.manager.directory)
      kept = (f'the last checkpoint, step {max(latest)}, holds finite values'
              if latest else 'no checkpoint was written')
      terms = ', '.join(f'{k}={v:.6g}' for k, v in sorted(values.items()))
      raise NonFiniteLossError(
          f'non-finite loss at step {step} (epoch {epoch + 1}): {terms}. Training stopped '
          f'without saving; {kept} ({self.manager.directory}). Lower the learning rate '
          f'(config.optim.lr) or check the inputs.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint) and evaluates.

  Returns the final metrics, also written to ``workdir/metrics.json``.
  """
  from clu import metric_writers, periodic_actions

  from reid_jax import data

  workdir = fileio.resolve(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  data_dir = config.input.get('data_dir')
  ensure_prepared(config.input.dataset, data_dir)
  info = data.dataset_info(config.input, data_dir=data_dir)
  method = registry.get_method(config.model.name)
  if method.check_data is not None:
    method.check_data(config, info)  # e.g. SAN without textures: refused before building
  mesh = make_mesh(config)
  plan = data.train_plan(config.input, seed=config.seed, num_epochs=config.num_epochs,
                         data_dir=data_dir)
  # Global step at which each epoch ends (P x K epochs differ in length, as the official sampler's).
  epoch_ends = np.cumsum([plan.num_batches(e) for e in range(config.num_epochs)])
  num_steps = int(epoch_ends[-1])
  if config.get('max_steps'):
    num_steps = min(num_steps, config.max_steps)

  resuming = bool(ckpt_lib.committed_steps(workdir / 'checkpoints'))
  with jax.set_mesh(mesh):
    graphdef, state, optimizers = init_state(config, info.num_classes, mesh, fresh=not resuming)
    train_step = make_train_step(graphdef, optimizers, config, mesh)
    epoch_lrs = optimizers.learning_rates(config, config.num_epochs)
    fields = method.batch_fields(config)
    train_iter = data.train_iterator(config.input, seed=config.seed,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(),
                                     num_epochs=config.num_epochs, data_dir=data_dir)
    manager = ckpt_lib.TrainCheckpointManager(
        workdir / 'checkpoints', graphdef, keep=config.checkpoint.keep,
        async_save=config.checkpoint.get('async_save', True))
    state, start_step = manager.restore_latest(state, train_iter)
    if start_step:
      logging.info('resumed from step %d', start_step)
    elif resuming:  # no checkpoint was readable: a fresh start after all
      _, state, _ = init_state(config, info.num_classes, mesh)

    writer = metric_writers.create_default_writer(
        os.fspath(workdir), just_logging=jax.process_index() > 0, asynchronous=False)
    jsonl = fileio.JsonlLog(workdir / 'metrics.jsonl') if jax.process_index() == 0 else None
    hooks = []
    if jax.process_index() == 0:
      hooks.append(periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                                   every_steps=config.log_every_steps))
      if config.get('profile'):
        hooks.append(periodic_actions.Profile(logdir=os.fspath(workdir), num_profile_steps=5))
    meta = {'num_classes': info.num_classes, 'model': config.model.to_dict()}

    guard = _FiniteGuard(manager)

    def save(step, force=False):
      guard.check()  # never write a checkpoint after a non-finite step
      manager.save(step, state, train_iter, meta=meta, force=force)

    results = None
    step = start_step
    t0, seen = time.time(), 0
    with _Preemption() as preemption:
      while step < num_steps:
        batch = next(train_iter)
        epoch = int(batch['epoch'][0])
        lr = {g: jnp.float32(t[min(epoch, len(t) - 1)]) for g, t in epoch_lrs.items()}
        epoch_start = int(epoch_ends[epoch - 1]) if epoch else 0
        context = {'epoch': jnp.int32(epoch), 'epoch_step': jnp.int32(step - epoch_start)}
        state, metrics = train_step(state, put_batch(mesh, batch, fields), lr, context)
        step += 1
        guard.add(step, epoch, metrics)
        seen += batch['image'].shape[0] * jax.process_count()
        for h in hooks:
          h(step)
        if step % config.log_every_steps == 0 or step == num_steps:
          guard.check()
          scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
          scalars['images_per_sec'] = seen / max(time.time() - t0, 1e-9)
          scalars['epoch'] = epoch + 1
          t0, seen = time.time(), 0
          writer.write_scalars(step, scalars)
          if jsonl:
            jsonl.write({'step': step, **scalars})
        end_of_epoch = step == int(epoch_ends[epoch])
        if preemption.requested or manager.reached_preemption(step):
          save(step, force=True)
          manager.wait()
          logging.warning('preemption requested: saved step %d, exiting', step)
          return {'preempted_at_step': step}
        if step % config.checkpoint.every_steps == 0 or step == num_steps:
          save(step)
        every = config.eval.every_epochs
        if end_of_epoch and every and (epoch + 1) % every == 0 and step != num_steps:
          guard.check()
          results = evaluate_model(model_from_state(graphdef, state), config, mesh,
                                   data_dir=data_dir)
          writer.write_scalars(step, summary(results, 'eval/'))
    manager.wait()
    guard.check()
    final = {'step': step}
    if config.eval.at_end:
      results = evaluate_model(model_from_state(graphdef, state), config, mesh, data_dir=data_dir,
                               pictures_dir=workdir / 'pictures')
      final.update(summary(results))
    if method.pictures is not None and step > start_step and jax.process_index() == 0:
      with fileio.LocalStaging(workdir / 'pictures') as directory:  # the last training batch
        method.pictures(model_from_state(graphdef, state), batch, config, directory)
    writer.write_scalars(step, {f'eval/{k}': v for k, v in final.items()})
    writer.flush()
    if jax.process_index() == 0:
      fileio.write_json_atomic(final, workdir / 'metrics.json')
    train_iter_close = getattr(train_iter, 'close', None)
    if train_iter_close:
      train_iter_close()
    return final


def evaluate_checkpoint(config, checkpoint_dir: str, workdir: str) -> dict[str, Any]:
  """``--mode=eval``: metrics of a checkpoint on ``config.input.dataset``, written as JSON."""
  workdir = fileio.resolve(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  data_dir = config.input.get('data_dir')
  ensure_prepared(config.input.dataset, data_dir)
  mesh = make_mesh(config)
  with jax.set_mesh(mesh):
    model = ckpt_lib.restore_model(config.model, checkpoint_dir)
    results = evaluate_model(model, config, mesh, data_dir=data_dir,
                             pictures_dir=workdir / 'pictures')
  final = summary(results)
  if jax.process_index() == 0:
    fileio.write_json_atomic(final, workdir / 'eval_metrics.json')
  return final
