"""PyTorch checkpoint import: safe reading, key maps per architecture, in-place weight copy.

  sd = load_torch_checkpoint('market_resnet50_model_120_rank1_945.pth')
  report = load_torch_weights(model, sd)   # raises on a missing key or a shape mismatch
  print(report.unused)

``python -m reid_jax.convert --config=configs/baseline.py --torch_checkpoint=FILE --out=DIR``
writes an orbax checkpoint that training and evaluation restore (``reid_jax.checkpoint``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import pickle
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from reid_jax.convert import keymaps
from reid_jax.convert.torch_pickle import UnsafeCheckpointError, _unsafe_message
from reid_jax.convert.torch_pickle import load as _load_without_torch

__all__ = ['load_torch_checkpoint', 'load_torch_weights', 'LoadReport', 'UnsafeCheckpointError']

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
    name = text.split(marker, 1)[1].split()[0] if marker in text else 'an unsupported global'
    raise UnsafeCheckpointError(_unsafe_message(path, name.rstrip('.,'))) from None
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
  """What ``load_torch_weights`` did. ``unused``: checkpoint keys with no place in the model."""
  loaded: list[str]
  unused: list[str]
  excluded: list[str]
  aliases_checked: list[str] = dataclasses.field(default_factory=list)

  def __str__(self) -> str:
    s = f'loaded {len(self.loaded)} tensors'
    if self.excluded:
      s += f', excluded {len(self.excluded)} model keys ({", ".join(self.excluded[:5])}...)'
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
                       exclude: Sequence[str] = ()) -> LoadReport:
  """Copies a PyTorch state_dict into ``model`` in place (pure NumPy; torch is not imported).

  The model's key map (``reid_jax.convert.keymaps``) names the PyTorch key of every weight and
  statistic. Every mapped key must be present with the right shape, otherwise a ``KeyError`` /
  ``ValueError`` names the key. ``exclude``: glob patterns of PyTorch keys to leave at their
  initial value (e.g. ``('classifier.*',)`` when fine-tuning on a dataset with other classes).
  ``num_batches_tracked`` entries are ignored. ``model`` may be abstract (``nnx.eval_shape``):
  when the key map covers every variable, loading makes it concrete without a random init.

  Duplicate keys the architecture declares (``keymaps.register_aliases``, e.g. APNet's
  ``base_k.*``) must, where present, equal their canonical tensor exactly, otherwise a
  ``ValueError`` names both keys; an alias is skipped when it or its canonical key is excluded.
  """
  targets = keymaps.keymap_for(model)
  aliases = keymaps.aliases_for(model)
  is_excluded = lambda k: any(fnmatch.fnmatchcase(k, p) for p in exclude)  # noqa: E731
  excluded = sorted(k for k in targets if is_excluded(k))
  wanted = {k: t for k, t in targets.items() if k not in excluded}
  aliases_checked = _check_aliases(state_dict, {
      a: c for a, c in aliases.items() if c in wanted and not is_excluded(a)})
  missing = sorted(k for k in wanted if k not in state_dict)
  if missing:
    raise KeyError(f'checkpoint lacks {len(missing)} key(s) the model needs: '
                   f'{", ".join(missing[:10])}{"..." if len(missing) > 10 else ""} '
                   f'({type(model).__name__} key map; pass exclude=... to skip keys on purpose)')
  updates = []
  for key, target in wanted.items():
    value = np.asarray(state_dict[key])
    converted = _to_flax_layout(value, target.kind)
    current = target.variable.get_value()  # an array, or a ShapeDtypeStruct in an abstract model
    expected = tuple(current.shape)
    if converted.shape != expected:
      raise ValueError(f'shape mismatch for checkpoint key {key!r}: checkpoint has '
                       f'{tuple(value.shape)}, the model expects {expected} in Flax layout '
                       f'({target.kind})')
    # np.array copies: jnp.asarray of a NumPy array can alias its buffer on CPU, and the caller's
    # arrays (e.g. views of live torch tensors) may change after loading.
    updates.append((target.variable, jnp.asarray(np.array(converted, dtype=current.dtype))))
  for variable, value in updates:  # assign only once everything is known to fit
    variable.set_value(value)
  unused = sorted(k for k in state_dict if k not in targets and k not in aliases
                  and not k.endswith('num_batches_tracked'))
  return LoadReport(loaded=sorted(wanted), unused=unused, excluded=excluded,
                    aliases_checked=aliases_checked)


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
