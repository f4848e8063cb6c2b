"""Training-step benchmark: the real reid_jax train step against the same model and step in
PyTorch, in the same run, printing JSON.

  python bench/train.py                               # BoT R50, 256x128, batch 64 (P16 x K4)
  python bench/train.py --depth=18 --width=16 --steps=5 --warmup=2   # narrow, quick on a CPU
  python bench/train.py --quick                       # tiny model, 1 step: a smoke run
  python bench/train.py --dtype=bfloat16              # bf16 compute (torch: autocast / AMP)

What is measured, per side, on the same synthetic batches (random normalised images, P x K
labels):
* reid_jax: ``reid_jax.train.init_state`` + ``make_train_step`` (the jitted, donated step that
  ``train_and_evaluate`` runs: forward, CE-LS + batch-hard triplet, backward, Adam with coupled
  L2, BN statistics). Compile: AOT ``lower`` + ``compile`` of that step, reported separately; the
  timed calls go through the jitted function itself (its cache holds the AOT executable, which
  ``first_call_s`` shows).
* PyTorch: ``tests.torch_reference.TorchBoT`` (same architecture), the same losses written in
  torch, ``torch.optim.Adam(weight_decay=...)`` (coupled L2, parameter groups as BoT builds them),
  eager mode. ``--model=mpn``: ``tests.torch_reference_mpn.TorchMPN`` (the official ``TS``
  layout), the official MPN objective (``torch_mpn_loss``: CE per MT/AT classifier, class-wise
  alignment, hardest-triplet selection on the host as the official code does) and
  ``torch.optim.SGD(momentum, nesterov, weight_decay)``; reid_jax runs ``configs/mpn.py`` (the
  stripes prior). MPN needs >= 6 feature rows: ``--quick`` uses 96x32 for it, and the recipe's
  own step is ``--model=mpn --size=384x128 --batch=48 --k=8``. ``--model=san``:
  ``tests.torch_reference_san`` (SA-Enc + SA-Dec) and its ``train_step`` (the official batch:
  ReID and decoder gradients, AMSGrad with coupled weight decay on the encoder, the two decoder
  Adams), on batches that carry a texture per identity; reid_jax runs ``configs/san.py`` with the
  learning rates of its main phase (epoch 20: AMSGrad live, the warm-up Adam at 0). On CUDA: AMP
  (fp16 + GradScaler by default, ``--torch_amp``; SAN: ``--torch_amp=bf16`` or ``none``, its two
  objectives have no GradScaler here) and channels_last, the baseline of the issue's target
  ("1.3x PyTorch AMP channels-last at equal batch").
Warm-up steps (jax: after the AOT compile; torch: the first steps) are excluded; the timed steps
alternate jax / torch so that load from other jobs hits both sides alike. On XLA:CPU a jax step
that directly follows a torch step runs slower than one after a jax step (R50 batch 16: 4.3 s
against 2.7 s), so on an idle machine compare ``--side=jax`` and ``--side=torch`` runs instead
(docs/benchmarks.md). Step time is the median
of ``--steps`` steps, each synchronised (``block_until_ready`` / ``cuda.synchronize``);
images/s = batch / median step time; ``ratio`` = jax images/s / torch images/s. Each step's CPU
time (user + system, all threads) is recorded too: ``ratio_cpu_time_torch_over_jax`` (torch CPU
seconds per step / jax's) is the figure to read on a shared CPU, where wall times include other
jobs' time slices.

Memory: host RSS sampled every 5 ms (psutil): per side, the peak over its build + compile +
warm-up minus the RSS before it was built (jax is built and warmed up first, torch second, so the
torch number can be low if it reuses memory the allocator kept from jax: run ``--side=torch`` /
``--side=jax`` for isolated figures, where ``ru_maxrss`` is that side's alone); XLA's own
``memory_analysis`` of the compiled step (device-independent buffer sizes); device memory stats
where the backend has them (GPU: ``peak_bytes_in_use``; torch: ``max_memory_allocated``).

Models: ``MODELS`` maps a name to its config file and PyTorch builder; adding a method is one
entry (a method without a config file here is skipped with a note).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from typing import Any, Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GIB = 2.0**30


# ------------------------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class ModelSpec:
  config_file: str                   # relative to the repository root; get_config(config_arg)
  config_arg: str | None = None
  torch_builder: Callable | None = None  # (config, num_classes) -> nn.Module, or None: jax only
  # (config, p, k) -> loss(train-mode output, labels): the method's objective in torch.
  torch_loss: Callable | None = None
  quick_size: str = '64x32'          # --quick input size (HxW)
  quick_model: dict | None = None    # --quick: config.model overrides (e.g. a narrow decoder)
  note: str = ''
  # (config, batches, seed) -> batches with the method's extra fields (SAN: 'texture').
  add_fields: Callable | None = None
  # (config, model, batches, device, amp, channels_last, p, k) -> a side replacing TorchSide
  # (a method whose step is not one loss and one optimizer).
  torch_side: Callable | None = None


def _torch_bnneck_loss(config, p, k):
  """BoT / APNet: CE with label smoothing on the logits + batch-hard triplet on the feature."""
  del p, k
  c = config.loss
  margin = None if c.get('triplet_soft_margin') else c.triplet_margin
  return lambda out, y: (torch_cross_entropy_label_smooth(out[0], y, c.ce_epsilon)
                         + torch_triplet_batch_hard(out[1], y, margin))


def _torch_bot(config, num_classes):
  from tests.torch_reference import TorchBoT
  m = config.model
  return TorchBoT(num_classes, neck_feat=m.neck_feat, depth=m.depth, last_stride=m.last_stride,
                  ceil_mode=m.maxpool_ceil_mode, ibn=m.ibn, width=m.width)


def _torch_apnet(config, num_classes):
  from reid_jax.models.apnet import pyramid_splits
  from tests.torch_reference_apnet import TorchAPNet
  m = config.model
  if m.attention != 'channel':
    raise SystemExit('--model=apnet: the PyTorch reference covers APNet-C (attention=channel)')
  return TorchAPNet(num_classes, level=m.level, splits=pyramid_splits(m.level, m.pyramid)[:-1],
                    se_hidden=m.se_hidden, logits_as_feature=m.logits_as_feature,
                    depth=m.depth, last_stride=m.last_stride, width=m.width)


def _torch_mpn(config, num_classes):
  from tests.torch_reference_mpn import TorchMPN
  m = config.model
  if m.get('prior', 'stripes') != 'stripes':
    raise SystemExit('--model=mpn: the benchmark runs the stripes prior (synthetic batches have '
                     'no parsing masks)')
  return TorchMPN(num_classes, parts=m.parts, channels=m.part_channels,
                  ca=m.get('channel_attention', False), depth=m.depth, last_stride=m.last_stride,
                  width=m.width)


def _torch_mpn_loss(config, p, k):
  """``train_mpn_no_ca.py``'s objective (every weight 1, plain CE), on float32 outputs."""
  from tests.torch_reference_mpn import torch_mpn_loss
  c = config.loss
  weights = [c.get(w, 1.0) for w in ('mt_weight', 'at_weight', 'align_weight', 'triplet_weight')]
  if weights != [1.0] * 4 or c.get('ce_epsilon', 0.0):
    raise SystemExit('--model=mpn: the PyTorch side implements the official loss (weights 1, '
                     'plain CE) only')

  def loss(out, y):
    out = [[t.float() for t in ts] for ts in out]
    return torch_mpn_loss(*out, y, p, k, margin=c.triplet_margin)[0]
  return loss


def _torch_san(config, num_classes):
  from tests.torch_reference_san import TorchSAN, TorchSANDecoder, TorchSANEncoder
  m = config.model
  encoder = TorchSANEncoder(num_classes, feature_dim=m.feature_dim, depth=m.depth,
                            width=m.width)
  stage_channels = [c * (4 if m.depth >= 50 else 1) for c in
                    (m.width, 2 * m.width, 4 * m.width, 8 * m.width)]
  return TorchSAN(encoder, TorchSANDecoder(stage_channels, tuple(m.decoder_channels),
                                           m.texture_size))


def _san_textures(config, batches, seed):
  """A texture ``[T, T, 3]`` in [-1, 1] per identity (``T = config.model.texture_size``), the
  same for all its images, as synthetic_reid's."""
  rng = np.random.default_rng(seed + 1)
  t = config.model.texture_size
  textures = {}
  out = []
  for b in batches:
    for label in b['label']:
      if int(label) not in textures:
        textures[int(label)] = rng.uniform(-1, 1, (t, t, 3)).astype(np.float32)
    out.append(dict(b, texture=np.stack([textures[int(y)] for y in b['label']])))
  return out


MODELS: dict[str, ModelSpec] = {
    'baseline': ModelSpec('configs/baseline.py', torch_builder=_torch_bot,
                          torch_loss=_torch_bnneck_loss),
    # Same step size as BoT (256x128, batch 64) so the two are comparable; the recipe itself
    # trains APNet at 384x192 (pass --size=384x192 --batch=80).
    'apnet': ModelSpec('configs/apnet.py', torch_builder=_torch_apnet,
                       torch_loss=_torch_bnneck_loss),
    # Same default step size too (a 16x8 map: stripes of 2 rows); the recipe is 384x128, P6 x K8.
    'mpn': ModelSpec('configs/mpn.py', torch_builder=_torch_mpn, torch_loss=_torch_mpn_loss,
                     quick_size='96x32'),
    # The recipe's step: 256x128, P16 x K4, 256x256 textures.
    'san': ModelSpec('configs/san.py', torch_builder=_torch_san,
                     add_fields=_san_textures, torch_side=lambda *a: SANTorchSide(*a),
                     quick_model=dict(feature_dim=32, decoder_channels=(16, 8, 8, 4, 4),
                                      texture_size=32)),
}


def model_batches(spec: ModelSpec, config, n, p, k, h, w, num_classes, seed=0):
  """``synthetic_batches`` plus the method's extra fields."""
  batches = synthetic_batches(n, p, k, h, w, num_classes, seed)
  return spec.add_fields(config, batches, seed) if spec.add_fields else batches


def make_torch_side(spec: ModelSpec, config, model, batches, device, amp, channels_last, p, k):
  """The PyTorch side of ``spec``: its own ``torch_side``, or ``TorchSide`` with its loss."""
  if spec.torch_side is not None:
    return spec.torch_side(config, model, batches, device, amp, channels_last, p, k)
  return TorchSide(config, model, batches, device, amp, channels_last,
                   spec.torch_loss(config, p, k))


def load_config(name: str):
  if name not in MODELS:
    raise SystemExit(f'--model={name!r}: unknown; known: {sorted(MODELS)}')
  spec = MODELS[name]
  path = os.path.join(ROOT, spec.config_file)
  if not os.path.exists(path):
    return None, spec
  module_spec = importlib.util.spec_from_file_location(f'_bench_config_{name}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(spec.config_arg), spec


# ------------------------------------------------------------------------------- memory
class RssSampler:
  """Samples this process's RSS in a thread; ``window()`` returns the peak since ``mark()``."""

  def __init__(self, interval=0.005):
    import psutil
    self._proc = psutil.Process()
    self._interval = interval
    self._peak = self.now()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def now(self) -> int:
    return self._proc.memory_info().rss

  def _run(self):
    while not self._stop.wait(self._interval):
      self._peak = max(self._peak, self.now())

  def mark(self) -> int:
    self._peak = now = self.now()
    return now

  def peak(self) -> int:
    return max(self._peak, self.now())

  def stop(self):
    self._stop.set()
    self._thread.join()


def log(msg):
  """Progress on stderr (stdout is the JSON)."""
  print(f'[bench/train.py {time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)


def ru_maxrss_gib() -> float:
  scale = 1 if platform.system() == 'Darwin' else 1024  # bytes on macOS, KiB on Linux
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / GIB


# ------------------------------------------------------------------------------- data
def synthetic_batches(n, p, k, h, w, num_classes, seed=0):
  """``n`` batches of P x K labels (P distinct identities, K images each) and N(0, 1) images
  (what a normalised image looks like), NHWC float32."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    ids = rng.choice(num_classes, size=p, replace=False)
    out.append({'image': rng.standard_normal((p * k, h, w, 3), dtype=np.float32),
                'label': np.repeat(ids, k).astype(np.int32)})
  return out


# ------------------------------------------------------------------------------- jax side
class JaxSide:
  name = 'jax'

  def __init__(self, config, num_classes, batches, torch_state_dict=None):
    import jax
    import jax.numpy as jnp

    from reid_jax import models, train
    self.jax = jax
    self.config = config
    self.info: dict[str, Any] = {}
    self.mesh = train.make_mesh(config)
    self._mesh_ctx = jax.set_mesh(self.mesh)
    self._mesh_ctx.__enter__()
    t = time.perf_counter()
    graphdef, self.state, tx = train.init_state(config, num_classes, self.mesh)
    jax.block_until_ready(self.state)
    self.info['init_s'] = time.perf_counter() - t
    if torch_state_dict is not None:
      self.state = _load_torch_init(graphdef, self.state, tx, self.mesh, torch_state_dict)
    self.info['same_init_as_torch'] = torch_state_dict is not None
    self.step_fn = train.make_train_step(graphdef, tx, config, self.mesh)
    fields = models.get_method(config.model.name).batch_fields(config)
    self.batches = [train.put_batch(self.mesh, b, fields) for b in batches]
    self.lr = jnp.float32(config.optim.lr)
    if len(tx.groups) > 1:
      # Several optimizer groups (SAN): the learning rates of the first epoch in which
      # config.optim (the main group) is live, the recipe's main phase.
      epoch = int(config.optim.get('start_epoch', 0) or 0)
      tables = tx.learning_rates(config, epoch + 1)
      self.lr = {g: jnp.float32(t[epoch]) for g, t in tables.items()}
      self.info['learning_rates'] = {g: float(v) for g, v in self.lr.items()}
    t = time.perf_counter()
    lowered = self.step_fn.lower(self.state, self.batches[0], self.lr)
    self.info['lower_s'] = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    self.info['compile_s'] = time.perf_counter() - t
    self.info['memory_analysis'] = _memory_analysis(compiled)
    self._i = 0

  def step(self) -> float:
    batch = self.batches[self._i % len(self.batches)]
    self._i += 1
    t = time.perf_counter()
    self.state, metrics = self.step_fn(self.state, batch, self.lr)
    loss = float(metrics['loss'])  # waits for the step (the state is ready when the loss is)
    self.jax.block_until_ready(self.state)
    dt = time.perf_counter() - t
    self.last_loss = loss
    return dt

  def device_memory(self) -> dict | None:
    stats = self.jax.devices()[0].memory_stats()
    if not stats:
      return None
    keys = ('peak_bytes_in_use', 'bytes_in_use', 'bytes_limit')
    return {f'{k}_gib': stats[k] / GIB for k in keys if k in stats}

  def describe(self) -> dict:
    d = self.jax.devices()[0]
    return {'platform': d.platform, 'device_kind': d.device_kind,
            'device_count': self.jax.device_count(), 'dtype': self.config.model.dtype}


def _load_torch_init(graphdef, state, tx, mesh, torch_state_dict):
  """The train state of ``init_state`` with the PyTorch model's weights and BN statistics (and a
  fresh optimizer state), so that both sides run the same numbers from the same start."""
  import jax
  from flax import nnx

  from reid_jax import train
  from reid_jax.convert import load_torch_weights
  model = train.model_from_state(graphdef, jax.device_get(state))
  report = load_torch_weights(model, torch_state_dict)
  if getattr(report, 'unused', None):
    raise SystemExit(f'bench/train.py: torch keys with no place in the jax model: {report.unused}')
  _, params, rest = nnx.split(model, nnx.Param, ...)
  new = dict(state, params=params, rest=rest, opt_state=tx.init(params))
  if jax.tree.structure(new) != jax.tree.structure(state):
    raise SystemExit('bench/train.py: the converted state does not match init_state\'s structure')
  return jax.device_put(new, jax.tree.map(lambda x: train.param_sharding(mesh, x), new))


def _memory_analysis(compiled) -> dict | None:
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 (not every backend implements it)
    return None
  if m is None:
    return None
  out = {}
  for k in ('argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
            'temp_size_in_bytes', 'generated_code_size_in_bytes'):
    v = getattr(m, k, None)
    if v is not None:
      out[k.replace('_in_bytes', '_gib')] = v / GIB
  return out


# ------------------------------------------------------------------------------- torch side
def torch_cross_entropy_label_smooth(logits, labels, epsilon):
  import torch
  log_probs = torch.log_softmax(logits.float(), dim=1)
  targets = torch.zeros_like(log_probs).scatter_(1, labels.unsqueeze(1), 1)
  targets = (1 - epsilon) * targets + epsilon / logits.shape[1]
  return (-targets * log_probs).mean(0).sum()


def torch_triplet_batch_hard(feat, labels, margin):
  """reid-strong-baseline ``TripletLoss``: euclidean_dist (clamp 1e-12, sqrt), hardest positive /
  negative per anchor, ``MarginRankingLoss(margin)`` (or soft margin with ``margin=None``)."""
  import torch
  import torch.nn.functional as F
  x = feat.float()
  xx = x.pow(2).sum(1, keepdim=True)
  dist = (xx + xx.t() - 2 * x @ x.t()).clamp(min=1e-12).sqrt()
  same = labels[:, None] == labels[None, :]
  dist_ap = dist.masked_fill(~same, float('-inf')).max(1).values
  dist_an = dist.masked_fill(same, float('inf')).min(1).values
  y = torch.ones_like(dist_an)
  if margin is None:
    return F.soft_margin_loss(dist_an - dist_ap, y)
  return F.margin_ranking_loss(dist_an, dist_ap, y, margin=margin)


def torch_optimizer(model, optim_config):
  """BoT's ``make_optimizer``: one group per parameter, bias lr/decay by name, Adam coupled L2
  (or ``torch.optim.SGD`` with momentum / nesterov for ``name='sgd'``, as MPN)."""
  import torch
  c = optim_config
  if c.name not in ('adam', 'amsgrad', 'sgd'):
    raise SystemExit(f'bench/train.py: torch side implements Adam, AMSGrad and SGD, config has '
                     f'{c.name!r}')
  groups = []
  for key, value in model.named_parameters():
    if not value.requires_grad:
      continue
    lr, wd = c.lr, c.weight_decay
    if 'bias' in key:
      lr, wd = c.lr * c.bias_lr_factor, c.weight_decay_bias
    groups.append({'params': [value], 'lr': lr, 'weight_decay': wd})
  if c.name == 'sgd':
    return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov)
  return torch.optim.Adam(groups, lr=c.lr, betas=tuple(c.betas), eps=1e-8,
                          amsgrad=c.name == 'amsgrad')


class TorchSide:
  name = 'torch'

  def __init__(self, config, model, batches, device, amp, channels_last, loss_fn):
    import torch
    self.torch = torch
    self.device = torch.device(device)
    self.info: dict[str, Any] = {}
    t = time.perf_counter()
    model = model.to(self.device)
    if channels_last:
      model = model.to(memory_format=torch.channels_last)
    model.train()
    self.model = model
    self.opt = torch_optimizer(model, config.optim)
    self.info['setup_s'] = time.perf_counter() - t
    self.amp_dtype = {'none': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}[amp]
    self.scaler = (torch.amp.GradScaler(self.device.type)
                   if self.amp_dtype == torch.float16 else None)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    self.batches = []
    for b in batches:
      x = torch.from_numpy(b['image']).permute(0, 3, 1, 2).contiguous()
      x = x.to(self.device).contiguous(memory_format=fmt)
      y = torch.from_numpy(b['label']).long().to(self.device)
      self.batches.append((x, y))
    self.loss_fn = loss_fn
    self.channels_last = channels_last
    self.amp = amp
    self._i = 0

  def _sync(self):
    if self.device.type == 'cuda':
      self.torch.cuda.synchronize()

  def step(self) -> float:
    torch = self.torch
    x, y = self.batches[self._i % len(self.batches)]
    self._i += 1
    self._sync()
    t = time.perf_counter()
    self.opt.zero_grad(set_to_none=True)
    with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                        enabled=self.amp_dtype is not None):
      out = self.model(x)
    loss = self.loss_fn(out, y)
    if self.scaler is not None:
      self.scaler.scale(loss).backward()
      self.scaler.step(self.opt)
      self.scaler.update()
    else:
      loss.backward()
      self.opt.step()
    self.last_loss = float(loss.detach())  # synchronises, as the jax side's float(loss)
    if self._i == 1:
      self.first_loss = self.last_loss
    self._sync()
    return time.perf_counter() - t

  def device_memory(self) -> dict | None:
    if self.device.type != 'cuda':
      return None
    return {'max_memory_allocated_gib': self.torch.cuda.max_memory_allocated() / GIB,
            'max_memory_reserved_gib': self.torch.cuda.max_memory_reserved() / GIB}

  def describe(self) -> dict:
    torch = self.torch
    d = {'device': str(self.device), 'amp': self.amp, 'channels_last': self.channels_last,
         'num_threads': torch.get_num_threads(), 'mode': 'eager'}
    if self.device.type == 'cuda':
      d['device_name'] = torch.cuda.get_device_name(self.device)
    return d


class SANTorchSide(TorchSide):
  """SAN's step in PyTorch (``tests.torch_reference_san.train_step``): the ReID objective with
  ``config.optim`` (AMSGrad, coupled weight decay) over the encoder, the decoder objective with
  ``config.optim_encoder`` / ``config.optim_decoder`` (Adam) over the encoder / decoder; the head
  reopened after each batch as the official loop does. ``last_loss`` is the ReID loss, as the
  jax side's ``metrics['loss']``."""

  def __init__(self, config, model, batches, device, amp, channels_last, p, k):
    import torch
    if amp == 'fp16':
      raise SystemExit('--model=san: the PyTorch side has no GradScaler for its two objectives; '
                       'pass --torch_amp=bf16 or --torch_amp=none')
    super().__init__(config, model, batches, device, amp, channels_last, loss_fn=None)
    self.k = k
    enc, dec = self.model.encoder, self.model.decoder
    adam = lambda params, c: torch.optim.Adam(params, lr=c.lr, betas=tuple(c.betas),  # noqa: E731
                                              weight_decay=c.weight_decay)
    self.opts = {'main': torch_optimizer(enc, config.optim),
                 'encoder': adam(enc.parameters(), config.optim_encoder),
                 'decoder': adam(dec.parameters(), config.optim_decoder)}
    self.textures = [torch.from_numpy(b['texture']).permute(0, 3, 1, 2).contiguous()
                     .to(self.device) for b in batches]

  def step(self) -> float:
    import contextlib
    import functools

    from tests import torch_reference_san as ts
    torch = self.torch
    i = self._i % len(self.batches)
    x, y = self.batches[i]
    self._i += 1
    autocast = (functools.partial(torch.autocast, self.device.type, dtype=self.amp_dtype)
                if self.amp_dtype is not None else contextlib.nullcontext)
    self._sync()
    t = time.perf_counter()
    losses = ts.train_step(self.model.encoder, self.model.decoder, self.opts, x, y,
                           self.textures[i], k=self.k, autocast=autocast)
    ts.set_head(self.model.encoder, closed=False)  # open_all_layers at the batch end
    self.last_loss = losses['loss']
    if self._i == 1:
      self.first_loss = self.last_loss
    self._sync()
    return time.perf_counter() - t


def torch_settings(torch_device: str, dtype: str, torch_amp: str = 'auto',
                   channels_last: str = 'auto') -> tuple[str, bool]:
  """The torch side's AMP mode and memory format for a reid_jax ``dtype``: on CUDA fp16 AMP
  (GradScaler) and channels_last, the issue's baseline; on CPU bf16 autocast iff bfloat16."""
  amp = torch_amp
  if amp == 'auto':
    amp = 'fp16' if torch_device == 'cuda' else ('bf16' if dtype == 'bfloat16' else 'none')
  return amp, channels_last == 'yes' or (channels_last == 'auto' and torch_device == 'cuda')


def cpu_seconds() -> float:
  """User + system CPU time of this process, all threads (both sides run in it, one at a time)."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def timed_step(side) -> float:
  """``side.step()``'s wall time; its CPU time is appended to ``side.cpu_times``."""
  c = cpu_seconds()
  dt = side.step()
  side.__dict__.setdefault('cpu_times', []).append(cpu_seconds() - c)
  return dt


def side_result(side, times: list[float], batch: int) -> dict:
  """One side's JSON: images/s from the median step, its info, description and device memory.
  ``cpu_s_median``: CPU seconds (all threads) of the timed steps, a load-robust figure of the
  work a step does (on a shared CPU the wall time also holds other jobs' time slices)."""
  med = statistics.median(times)
  out = {'images_per_s': batch / med, 'step_s_median': med, 'step_s_min': min(times),
         'step_s': times, 'last_loss': side.last_loss}
  cpu = getattr(side, 'cpu_times', [])[-len(times):]
  if cpu:
    out['cpu_s_median'] = statistics.median(cpu)
    out['cpu_s'] = cpu
  out.update(side.info)
  out.update(side.describe())
  out['device_memory'] = side.device_memory()
  return out


def jax_warm_up(side, warmup: int):
  """The jax side's first call (after its AOT compile) and the other warm-up steps, into info."""
  side.info['first_call_s'] = side.step()  # the jitted call after AOT (cache hit: ~a step)
  side.info['first_loss'] = side.last_loss
  warm = [side.step() for _ in range(max(warmup - 1, 0))]
  side.info['warmup_s'] = [side.info['first_call_s']] + warm


def torch_warm_up(side, warmup: int, init_s: float):
  warm = [side.step() for _ in range(max(warmup, 1))]
  side.info['init_s'] = init_s
  side.info['first_loss'] = side.first_loss
  side.info['first_step_s'] = warm[0]
  side.info['warmup_s'] = warm
  return warm


def timed_steps(side, steps: int, time_cap_s: float | None = None, min_steps: int = 3) -> list:
  """Up to ``steps`` timed steps of one side; stops early once they add up to ``time_cap_s``
  (after at least ``min_steps``)."""
  times = []
  for _ in range(steps):
    times.append(timed_step(side))
    if time_cap_s is not None and len(times) >= min_steps and sum(times) >= time_cap_s:
      break
  return times


# ------------------------------------------------------------------------------- main
def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--model', default='baseline', help=f'one of {sorted(MODELS)}')
  ap.add_argument('--batch', type=int, default=64, help='global batch (P x K; K = --k)')
  ap.add_argument('--k', type=int, default=4, help='images per identity (P = batch / k)')
  ap.add_argument('--size', default='256x128', help='HxW in pixels')
  ap.add_argument('--steps', type=int, default=10, help='timed steps per side')
  ap.add_argument('--warmup', type=int, default=2, help='untimed steps per side (after compile)')
  ap.add_argument('--depth', type=int, default=None, help='ResNet depth (default: the config)')
  ap.add_argument('--width', type=int, default=None, help='stem width (default: the config, 64)')
  ap.add_argument('--num_classes', type=int, default=751, help='classifier rows (Market: 751)')
  ap.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                  help='reid_jax config.model.dtype; torch: bf16 autocast on CPU (--torch_amp=auto)')
  ap.add_argument('--side', default='both', choices=('both', 'jax', 'torch'),
                  help='run one side only (isolated peak RSS)')
  ap.add_argument('--torch_device', default='auto', choices=('auto', 'cpu', 'cuda'),
                  help="auto: cuda when jax runs on a GPU (an error if torch has no CUDA), else cpu")
  ap.add_argument('--torch_amp', default='auto', choices=('auto', 'none', 'fp16', 'bf16'),
                  help='auto: fp16 AMP on CUDA; on CPU bf16 autocast iff --dtype=bfloat16')
  ap.add_argument('--channels_last', default='auto', choices=('auto', 'yes', 'no'),
                  help='torch memory format; auto: channels_last on CUDA only')
  ap.add_argument('--same_init', default=True, action=argparse.BooleanOptionalAction,
                  help='start reid_jax from the torch model\'s weights (converted), so both sides '
                  'compute the same losses: first_loss / last_loss agree (a semantics check)')
  ap.add_argument('--torch_threads', type=int, default=0,
                  help="torch.set_num_threads (0: torch's default, one per core)")
  ap.add_argument('--num_batches', type=int, default=2, help='distinct synthetic batches cycled')
  ap.add_argument('--quick', action='store_true',
                  help='smoke run: depth 18, width 8, batch 8 (P2 x K4), 64x32 (MPN: 96x32; SAN: '
                  'a narrow decoder, 32x32 textures), 1 warm-up, 2 steps')
  ap.add_argument('--seed', type=int, default=0)
  args = ap.parse_args(argv)
  if args.quick:
    args.depth, args.width = args.depth or 18, args.width or 8
    quick_size = MODELS[args.model].quick_size if args.model in MODELS else '64x32'
    args.batch, args.size, args.steps, args.warmup = 8, quick_size, 2, 1
    args.num_classes = min(args.num_classes, 16)
  return args


def main(argv=None):
  args = parse_args(argv)
  h, w = (int(v) for v in args.size.lower().split('x'))
  if args.batch % args.k:
    raise SystemExit(f'--batch={args.batch} is not a multiple of --k={args.k}')
  p = args.batch // args.k
  if p > args.num_classes:
    raise SystemExit(f'P = {p} identities per batch > --num_classes={args.num_classes}')
  if args.steps < 1:
    raise SystemExit('--steps must be >= 1')

  config, spec = load_config(args.model)
  result: dict[str, Any] = {'model': args.model, 'batch': args.batch, 'p': p, 'k': args.k,
                            'size': [h, w], 'steps': args.steps, 'warmup': args.warmup,
                            'command': ' '.join(['bench/train.py'] + (sys.argv[1:] if argv is None
                                                                      else list(argv)))}
  if config is None:
    result['skipped'] = f'{spec.config_file} does not exist (model {args.model!r} not added yet)'
    print(json.dumps(result, indent=2))
    return result
  config.seed = args.seed
  config.input.size = (h, w)
  config.input.p, config.input.k = p, args.k
  config.model.dtype = args.dtype
  if args.depth:
    config.model.depth = args.depth
  if args.width:
    config.model.width = args.width
  if args.quick and spec.quick_model:
    config.model.update(spec.quick_model)
  result['model_config'] = {k: config.model[k] for k in ('name', 'depth', 'width', 'last_stride',
                                                         'dtype')}
  result['loss'] = {k: config.loss.get(k) for k in ('ce_epsilon', 'triplet_margin',
                                                    'center_weight')}
  result['optim'] = {'name': config.optim.name, 'weight_decay': config.optim.weight_decay,
                     'lr': config.optim.lr}

  import jax
  import torch
  result['versions'] = {'python': platform.python_version(), 'jax': jax.__version__,
                        'jaxlib': getattr(jax.lib, '__version__', None) or _jaxlib_version(),
                        'torch': torch.__version__, 'cpu_count': os.cpu_count(),
                        'machine': platform.machine()}

  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  want_jax = args.side in ('both', 'jax')
  want_torch = args.side in ('both', 'torch')
  if want_torch and spec.torch_builder is None:
    result['torch_skipped'] = spec.note or 'no PyTorch builder for this model'
    want_torch = False
  jax_on_gpu = jax.devices()[0].platform == 'gpu'
  torch_device = args.torch_device
  if torch_device == 'auto':
    torch_device = 'cuda' if jax_on_gpu else 'cpu'
  if want_torch and torch_device == 'cuda' and not torch.cuda.is_available():
    raise SystemExit(
        'bench/train.py: the PyTorch baseline must run on CUDA (jax is on a GPU, or '
        '--torch_device=cuda) but this torch has no CUDA '
        f'(torch {torch.__version__}, torch.cuda.is_available() = False). Install a CUDA build '
        'of torch, or pass --torch_device=cpu (not the issue\'s baseline) or --side=jax.')
  amp, channels_last = torch_settings(torch_device, args.dtype, args.torch_amp, args.channels_last)

  batches = model_batches(spec, config, args.num_batches, p, args.k, h, w, args.num_classes,
                          args.seed)
  sampler = RssSampler()
  rss_start = sampler.now()
  sides = []
  try:
    torch_model = None
    if want_torch:
      # Built first so that the jax side can start from the same weights (--same_init).
      rss0 = sampler.mark()
      t = time.perf_counter()
      torch.manual_seed(args.seed)
      torch_model = spec.torch_builder(config, args.num_classes)
      torch_build_s = time.perf_counter() - t
      torch_build_rss = sampler.peak() - rss0
    if want_jax:
      sd = None
      if want_torch and args.same_init:
        from tests.torch_reference import numpy_state_dict
        sd = numpy_state_dict(torch_model)
      rss0 = sampler.mark()
      t = time.perf_counter()
      side = JaxSide(config, args.num_classes, batches, torch_state_dict=sd)
      log(f"jax: init {side.info['init_s']:.1f} s, lower {side.info['lower_s']:.1f} s, "
          f"compile {side.info['compile_s']:.1f} s")
      jax_warm_up(side, args.warmup)
      side.info['setup_total_s'] = time.perf_counter() - t
      side.info['host_rss_added_gib'] = (sampler.peak() - rss0) / GIB
      sides.append(side)
    if want_torch:
      rss0 = sampler.mark()
      t = time.perf_counter()
      side = make_torch_side(spec, config, torch_model, batches, torch_device, amp,
                             channels_last, p, args.k)
      del torch_model
      warm = torch_warm_up(side, args.warmup, torch_build_s)
      log(f'torch: warm-up steps {[round(x, 2) for x in warm]} s')
      side.info['setup_total_s'] = time.perf_counter() - t + torch_build_s
      side.info['host_rss_added_gib'] = (sampler.peak() - rss0 + torch_build_rss) / GIB
      sides.append(side)

    # Timed steps, alternating sides (and which goes first), so shared-CPU noise hits both.
    times = {s.name: [] for s in sides}
    for i in range(args.steps):
      order = sides if i % 2 == 0 else sides[::-1]
      for s in order:
        times[s.name].append(timed_step(s))
        log(f'{s.name}: timed step {i + 1}/{args.steps}: {times[s.name][-1]:.3f} s')
    peak_all = sampler.peak()
  finally:
    sampler.stop()

  for s in sides:
    result[s.name] = side_result(s, times[s.name], args.batch)
  result['host_rss'] = {'start_gib': rss_start / GIB, 'peak_gib': peak_all / GIB,
                        'ru_maxrss_gib': ru_maxrss_gib()}
  if 'jax' in result and 'torch' in result:
    result['ratio_jax_over_torch'] = result['jax']['images_per_s'] / result['torch']['images_per_s']
    result['ratio_cpu_time_torch_over_jax'] = (result['torch']['cpu_s_median']
                                               / result['jax']['cpu_s_median'])
    if args.same_init:
      # Same weights, batches and number of steps: the losses agree (fp32: closely at the first
      # step; later steps drift by float rounding through Adam; bf16/fp16 looser).
      result['loss_check'] = {
          'same_init': True,
          'first_step_abs_diff': abs(result['jax']['first_loss'] - result['torch']['first_loss']),
          'last_step_abs_diff': abs(result['jax']['last_loss'] - result['torch']['last_loss'])}
  print(json.dumps(result, indent=2, default=_json_default))
  return result


def _jaxlib_version():
  try:
    import jaxlib
    return jaxlib.__version__
  except Exception:  # noqa: BLE001
    return None


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, tuple):
    return list(x)
  return str(x)


if __name__ == '__main__':
  main()
