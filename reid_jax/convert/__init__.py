"""PyTorch checkpoint import: safe reading, key maps per architecture, in-place weight copy.

  sd = load_torch_checkpoint('market_resnet50_model_120_rank1_945.pth')
  report = load_torch_weights(model, sd)   # raises on a missing key or a shape mismatch
  print(report.unused)

  # A checkpoint of another dataset (other classifier rows), e.g. for testing only:
  report = load_torch_weights(model, sd, skip_mismatched_classifiers=True)
  print(report.skipped)                    # the classifier keys left at their initial value

  # A backbone only (torchvision / IDE snapshot, e.g. MPN's data/1501.pth with 'model.*' keys):
  report = load_backbone(model, sd)        # into model.base; the prefix is found in sd

``python -m reid_jax.convert --config=configs/baseline.py --torch_checkpoint=FILE --out=DIR``
writes an orbax checkpoint that training and evaluation restore (``reid_jax.checkpoint``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import pickle
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from reid_jax.convert import keymaps
from reid_jax.convert.torch_pickle import (PLAIN_DATA_GLOBALS, UnsafeCheckpointError,
                                          _unsafe_message)
from reid_jax.convert.torch_pickle import load as _load_without_torch

__all__ = ['load_torch_checkpoint', 'load_torch_weights', 'load_backbone', 'LoadReport',
           'UnsafeCheckpointError']

_WRAPPER_KEYS = ('model', 'state_dict')
# Further state_dicts saved next to the main one, merged under a key prefix: SAN's checkpoints
# hold the encoder in 'state_dict' and the decoder in 'decoder_state_dict' (keys 'decoder.*').
_EXTRA_STATE_DICTS = {'decoder_state_dict': keymaps.SAN_DECODER_PREFIX}


def load_torch_checkpoint(path, *, use_torch: bool | None = None) -> dict[str, np.ndarray]:
  """Reads a PyTorch checkpoint into ``{key: np.ndarray}`` without ever running pickled code.

  With torch installed it uses ``torch.load(path, weights_only=True)``; otherwise (or with
  ``use_torch=False``) reid_jax's own restricted reader of the ``.pth`` formats. Accepts a bare
  state_dict or a ``{'model': ...}`` / ``{'state_dict': ...}`` wrapper, and strips the
  ``module.`` prefix that ``nn.DataParallel`` adds. A wrapper's ``decoder_state_dict`` (SAN's
  ``checkpoint_ep{N}.pth.tar``) comes along with its keys prefixed ``decoder.``. A pickled whole
  model is refused with a
  message saying how to re-save it as a state_dict.
  """
  path = str(path)
  if os.path.isdir(path):
    raise ValueError(f'{path} is a directory; expected a PyTorch checkpoint file (.pth)')
  if use_torch is None:
    try:
      import torch  # noqa: F401
      use_torch = True
    except ImportError:
      use_torch = False
  if use_torch:
    obj = _torch_load(path)
  else:
    try:
      obj = _load_without_torch(path)
    except FileNotFoundError:
      raise FileNotFoundError(f'PyTorch checkpoint not found: {path}') from None
  return _to_state_dict(obj, path)


def _torch_load(path: str) -> Any:
  import torch
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except FileNotFoundError:
    raise FileNotFoundError(f'PyTorch checkpoint not found: {path}') from None
  except pickle.UnpicklingError as e:
    # torch names the rejected global as "GLOBAL module.name"; surface it with our advice.
    text = str(e)
    marker = 'GLOBAL '
    if marker not in text:
      raise ValueError(f'{path}: not a PyTorch checkpoint (its pickle cannot be read)') from None
    name = text.split(marker, 1)[1].split()[0].rstrip('.,')
    module, _, attr = name.rpartition('.')
    if (module, attr) in PLAIN_DATA_GLOBALS:
      # Plain data next to the weights (BPBreID's pickled yacs CfgNode, NumPy scalars), which
      # torch's weights_only loader refuses: reid_jax's reader takes them without running code.
      logging.info('%s: read with reid_jax\'s restricted reader (%s is plain data: the yacs '
                   'config is read as a dict, none of its code runs)', path, name)
      return _load_without_torch(path)
    raise UnsafeCheckpointError(_unsafe_message(path, name)) from None
  except (RuntimeError, EOFError, KeyError, OSError) as e:  # truncated zip, wrong magic ...
    raise ValueError(f'{path}: not a PyTorch checkpoint ({type(e).__name__}: {e})') from None
  return _tensors_to_numpy(obj)


def _tensors_to_numpy(obj: Any) -> Any:
  import torch
  if isinstance(obj, torch.Tensor):
    t = obj.detach().cpu()
    if t.dtype == torch.bfloat16:
      import ml_dtypes
      return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()
  if isinstance(obj, Mapping):
    return {k: _tensors_to_numpy(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_tensors_to_numpy(v) for v in obj)
  return obj


def _strip_module(key: str) -> str:
  return key[len('module.'):] if key.startswith('module.') else key


def _to_state_dict(obj: Any, path: str) -> dict[str, np.ndarray]:
  extra = {}
  if isinstance(obj, Mapping):
    for key in _WRAPPER_KEYS:
      if key in obj and isinstance(obj[key], Mapping):
        extra = {prefix + _strip_module(k): v for name, prefix in _EXTRA_STATE_DICTS.items()
                 if isinstance(obj.get(name), Mapping) for k, v in obj[name].items()}
        obj = obj[key]
        break
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path}: expected a state_dict (a mapping of names to tensors) or a '
                     f"{{'model': ...}} / {{'state_dict': ...}} wrapper, got {type(obj).__name__}")
  out = {}
  for key, value in obj.items():
    if not isinstance(value, np.ndarray):
      continue  # e.g. non-tensor bookkeeping next to the weights
    out[_strip_module(key)] = value
  out.update({k: v for k, v in extra.items() if isinstance(v, np.ndarray)})
  if not out:
    raise ValueError(f'{path}: no tensors found; top-level keys are {sorted(obj)[:20]}')
  return out


@dataclasses.dataclass
class LoadReport:
  """What ``load_torch_weights`` did. ``unused``: checkpoint keys with no place in the model;
  ``excluded``: model keys left at their initial value (matched by ``exclude``, or ``skipped``:
  classifier keys whose class count differs from the model's, under
  ``skip_mismatched_classifiers``); ``absent``: optional model keys (``keymaps.Target.optional``)
  the checkpoint lacks, left at their initial value (HRNet's ``cls_head.*`` with the ImageNet
  file)."""
  loaded: list[str]
  unused: list[str]
  excluded: list[str]
  aliases_checked: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  absent: list[str] = dataclasses.field(default_factory=list)
  prefix: str = ''  # where the model's keys sat in the checkpoint (load_backbone)

  def __str__(self) -> str:
    s = f'loaded {len(self.loaded)} tensors'
    if self.excluded:
      s += f', excluded {len(self.excluded)} model keys ({", ".join(self.excluded[:5])}...)'
    if self.skipped:
      s += f' ({len(self.skipped)} classifier keys of another class count)'
    if self.absent:
      s += (f', {len(self.absent)} optional model keys not in the checkpoint kept their initial '
            f'value ({", ".join(self.absent[:5])}{"..." if len(self.absent) > 5 else ""})')
    if self.unused:
      s += f'; {len(self.unused)} checkpoint keys unused: {", ".join(self.unused[:10])}'
      s += '...' if len(self.unused) > 10 else ''
    return s


def _to_flax_layout(value: np.ndarray, kind: str) -> np.ndarray:
  if kind == keymaps.CONV:
    return np.transpose(value, (2, 3, 1, 0))
  if kind == keymaps.LINEAR:
    return value.T
  return value


def load_torch_weights(model: nnx.Module, state_dict: Mapping[str, np.ndarray], *,
                       exclude: Sequence[str] = (), prefix: str = '',
                       skip_mismatched_classifiers: bool = False) -> LoadReport:
  """Copies a PyTorch state_dict into ``model`` in place (pure NumPy; torch is not imported).

  The model's key map (``reid_jax.convert.keymaps``) names the PyTorch key of every weight and
  statistic. Every mapped key must be present with the right shape, otherwise a ``KeyError`` /
  ``ValueError`` names the key. ``exclude``: glob patterns of PyTorch keys to leave at their
  initial value (e.g. ``('classifier.*',)`` when fine-tuning on a dataset with other classes).
  ``num_batches_tracked`` entries are ignored. ``model`` may be abstract (``nnx.eval_shape``):
  when the key map covers every variable, loading makes it concrete without a random init.
  Keys the key map marks optional (``keymaps.Target.optional``) may be absent: they keep their
  initial value and are listed in ``report.absent`` (an abstract model has none to keep: error).

  ``prefix``: the checkpoint names the model's keys with this prefix, e.g. ``'model.'`` for a
  ResNet inside a torchvision-style wrapper (MPN's IDE snapshot ``FtNet.model``); ``exclude``
  patterns match the prefixed keys.

  ``skip_mismatched_classifiers``: key-map targets marked ``classifier`` (identity classifiers:
  one row per training class) whose checkpoint shape differs from the model's are left at their
  initial value, listed in ``report.skipped`` (and ``report.excluded``) and logged as a warning,
  instead of failing: a checkpoint trained on another dataset then loads for testing (the test
  feature never uses the classifier). Any other shape mismatch is still an error.

  Duplicate keys the architecture declares (``keymaps.register_aliases``, e.g. APNet's
  ``base_k.*``) must, where present, equal their canonical tensor exactly, otherwise a
  ``ValueError`` names both keys; an alias is skipped when it or its canonical key is excluded.
  """
  targets = {prefix + k: t for k, t in keymaps.keymap_for(model).items()}
  aliases = {prefix + a: prefix + c for a, c in keymaps.aliases_for(model).items()}
  is_excluded = lambda k: any(fnmatch.fnmatchcase(k, p) for p in exclude)  # noqa: E731
  excluded = sorted(k for k in targets if is_excluded(k))
  wanted = {k: t for k, t in targets.items() if k not in excluded}
  aliases_checked = _check_aliases(state_dict, {
      a: c for a, c in aliases.items() if c in wanted and not is_excluded(a)})
  missing = sorted(k for k in wanted if k not in state_dict and not wanted[k].optional)
  if missing:
    hints = sorted({wanted[k].missing_hint for k in missing if wanted[k].missing_hint})
    raise KeyError(f'checkpoint lacks {len(missing)} key(s) the model needs: '
                   f'{", ".join(missing[:10])}{"..." if len(missing) > 10 else ""} '
                   f'({type(model).__name__} key map; pass exclude=... to skip keys on purpose)'
                   + ''.join(f'; {h}' for h in hints))
  absent = sorted(k for k in wanted if k not in state_dict and wanted[k].optional)
  abstract = [k for k in absent
              if isinstance(wanted[k].variable.get_value(), jax.ShapeDtypeStruct)]
  if abstract:
    raise KeyError(f'checkpoint lacks {len(abstract)} optional key(s) ({", ".join(abstract[:5])}'
                   f'{"..." if len(abstract) > 5 else ""}) that would keep their initial value, '
                   f'but the {type(model).__name__} model is abstract (nnx.eval_shape) and has '
                   f'none: build it with real initial values')
  updates, skipped = [], []
  for key, target in wanted.items():
    if key in absent:
      continue
    value = np.asarray(state_dict[key])
    current = target.variable.get_value()  # an array, or a ShapeDtypeStruct in an abstract model
    expected = tuple(current.shape)
    ndim = {keymaps.CONV: 4, keymaps.LINEAR: 2}.get(target.kind, value.ndim)
    converted = _to_flax_layout(value, target.kind) if value.ndim == ndim else value
    if converted.shape != expected:
      if skip_mismatched_classifiers and target.classifier:
        skipped.append(key)
        continue
      raise ValueError(f'shape mismatch for checkpoint key {key!r}: checkpoint has '
                       f'{tuple(value.shape)}, the model expects {expected} in Flax layout '
                       f'({target.kind})'
                       + (' (an identity classifier: pass skip_mismatched_classifiers=True to '
                          'keep it at its initial value)' if target.classifier else ''))
    # np.array copies: jnp.asarray of a NumPy array can alias its buffer on CPU, and the caller's
    # arrays (e.g. views of live torch tensors) may change after loading.
    updates.append((target.variable, jnp.asarray(np.array(converted, dtype=current.dtype))))
  for variable, value in updates:  # assign only once everything is known to fit
    variable.set_value(value)
  if skipped:
    logging.warning('checkpoint classifier keys of another class count left at their initial '
                    'value (skip_mismatched_classifiers): %s', ', '.join(sorted(skipped)))
  unused = sorted(k for k in state_dict if k not in targets and k not in aliases
                  and not k.endswith('num_batches_tracked'))
  return LoadReport(loaded=sorted(set(wanted) - set(skipped) - set(absent)), unused=unused,
                    excluded=sorted(excluded + skipped), aliases_checked=aliases_checked,
                    skipped=sorted(skipped), absent=absent)


def _check_aliases(state_dict: Mapping[str, np.ndarray], aliases: Mapping[str, str]) -> list[str]:
  """Checks that each alias present in ``state_dict`` is an exact copy of its canonical key."""
  checked = []
  for alias, canonical in sorted(aliases.items()):
    if alias not in state_dict or canonical not in state_dict:
      continue  # a missing canonical key is reported by the caller; a missing alias is fine
    a, c = np.asarray(state_dict[alias]), np.asarray(state_dict[canonical])
    if a.shape != c.shape:
      raise ValueError(f'checkpoint key {alias!r} must duplicate {canonical!r} but has shape '
                       f'{tuple(a.shape)} instead of {tuple(c.shape)}')
    if not np.array_equal(a, c, equal_nan=np.issubdtype(a.dtype, np.inexact)):
      diff = np.abs(a.astype(np.float64) - c.astype(np.float64))
      raise ValueError(f'checkpoint key {alias!r} must duplicate {canonical!r} (the same tensor '
                       f'saved twice) but differs: {int(np.count_nonzero(diff))} of {a.size} '
                       f'values, max |diff| {float(diff.max()):.3g}. The checkpoint is '
                       f'inconsistent; pass exclude=[{alias!r}] to skip this check')
    checked.append(alias)
  return checked


def backbone_prefix(state_dict: Mapping[str, np.ndarray], keys: Sequence[str]) -> str:
  """The prefix under which ``state_dict`` holds every key of a backbone key map: ``''`` for a
  torchvision / IBN-Net file, ``'model.'`` for an IDE snapshot whose ResNet is ``self.model``,
  ``'base.'`` for a BoT checkpoint. ``''`` when no prefix holds them all (the caller reports the
  missing keys); a ``ValueError`` when several do."""
  anchor = keys[0]
  candidates = sorted({k[:len(k) - len(anchor)] for k in state_dict
                       if k == anchor or k.endswith('.' + anchor)})
  complete = [p for p in candidates if all(p + k in state_dict for k in keys)]
  if '' in complete or not complete:
    return ''
  if len(complete) > 1:
    raise ValueError(f'the checkpoint holds a complete backbone under several prefixes '
                     f'{complete}; keep one (e.g. re-save the state_dict of that sub-module)')
  return complete[0]


def load_backbone(model: nnx.Module, state_dict: Mapping[str, np.ndarray], *,
                  prefix: str | None = None, exclude: Sequence[str] = ()) -> LoadReport:
  """Copies a backbone checkpoint into ``model.base`` in place; the rest of the model keeps its
  initial value.

  Every reid_jax method keeps its backbone at ``model.base``; its key map comes from the
  backbone's class (``keymaps.keymap_for``): torchvision ResNet-18/34/50/101/152 (ImageNet files
  ``resnet50-19c8e357.pth``, ``resnet50-0676ba61.pth``), IBN-a ResNets in the IBN-Net / fast-reid
  layout (``resnet50_ibn_a.pth``: ``bn1.IN.*`` / ``bn1.BN.*``), HRNet-W32 (the ImageNet
  HRNet-W32-C file ``hrnetv2_w32_imagenet_pretrained.pth``, whose ``downsamp_modules.*``,
  ``final_layer.*`` and ``classifier.*`` are reported unused and which lacks ``cls_head.*``, kept
  at its init and listed in ``report.absent``). The backbone keys may sit under one prefix, found
  in the checkpoint when ``prefix`` is None (``backbone_prefix``, from the backbone's required
  keys): ``''`` for an ImageNet file, ``'model.'`` for MPN's IDE snapshot (WangKan0128/MPN
  ``data/1501.pth``, an ``FtNet`` whose ``model.fc.*`` and ``classifier.*`` are reported unused),
  ``'base.'`` for a BoT checkpoint, ``'backbone_appearance_feature_extractor.'`` for a BPBreID
  checkpoint. A missing or mis-shaped backbone key raises naming it, and then nothing is changed.
  ``report.prefix`` is the prefix used.
  """
  base = getattr(model, 'base', None)
  if not isinstance(base, nnx.Module):
    raise ValueError(f'{type(model).__name__} has no backbone module at model.base')
  if prefix is None:
    required = [k for k, t in keymaps.keymap_for(base).items() if not t.optional]
    prefix = backbone_prefix(state_dict, required)
  report = load_torch_weights(base, state_dict, prefix=prefix, exclude=exclude)
  report.prefix = prefix
  return report
