"""A reader of PyTorch ``.pth`` files that never runs pickled code, and needs no torch.

Both on-disk formats are read:
* the zip format (``torch.save`` since PyTorch 1.6): ``<root>/data.pkl`` plus one raw little-endian
  file per storage under ``<root>/data/``;
* the legacy format (PyTorch < 1.6, e.g. the BoT release files): magic number, protocol and system
  pickles, the object pickle, the list of storage keys, then each storage as an int64 element
  count followed by its raw bytes.
The unpickler admits only the globals a state_dict needs (OrderedDict, the tensor/parameter rebuild
functions, the storage types) and a few plain-data types that training scripts save next to it
(``PLAIN_DATA_GLOBALS``: a yacs ``CfgNode``, read as a plain ``dict`` subclass without running any
of its code, as torchreid/BPBreID save their config; NumPy scalars such as a saved rank-1; sets);
any other global (a model class, ``os.system``...) raises ``UnsafeCheckpointError`` naming it,
before anything is constructed.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_, 'UntypedStorage': np.uint8,
}


class UnsafeCheckpointError(pickle.UnpicklingError):
  """The file references a global outside the state_dict allow-list."""


class _StorageType:

  def __init__(self, name: str):
    self.name = name
    self.dtype = np.dtype(STORAGE_DTYPES[name])


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """``torch._utils._rebuild_tensor(_v2)``: a strided view of a flat storage, copied out.

  In the legacy format the storage bytes come after the object pickle, so there the tensor is
  a placeholder resolved once the bytes are read.
  """
  if isinstance(storage, _LazyStorage):
    return _LazyTensor(storage, storage_offset, size, stride)
  return _strided_copy(storage, storage_offset, size, stride)


def _strided_copy(storage, storage_offset, size, stride):
  size, stride = tuple(size), tuple(stride)
  if not size:
    return np.array(storage[storage_offset])
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=size, strides=tuple(s * itemsize for s in stride))
  return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused):
  return data


class ConfigNode(dict):
  """A pickled yacs ``CfgNode`` (``yacs.config.CfgNode``, a ``dict`` subclass) read as plain data:
  its items only. None of yacs's code runs: the unpickler creates this class instead, fills its
  items, and drops the instance state (yacs's ``__immutable__``, ``__deprecated_keys__`` ...)."""

  def __setstate__(self, state):
    del state


def _numpy_dtype(name, align=False, copy=False):
  """``numpy.dtype`` as pickled (``dtype(name, align, copy)`` then its ``__setstate__``); always a
  fresh copy, so the pickled state never touches numpy's shared built-in dtypes."""
  del copy
  dtype = np.dtype(name, align=bool(align), copy=True)
  if dtype.hasobject:
    raise UnsafeCheckpointError(f'refusing to load a NumPy object dtype {name!r} from a pickle')
  return dtype


def _numpy_scalar(dtype, data=None):
  """``numpy.core.multiarray.scalar(dtype, bytes)``: a NumPy scalar such as a saved rank-1."""
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise UnsafeCheckpointError('refusing to load a NumPy scalar of an object dtype from a pickle')
  if isinstance(data, str):  # a Python 2 pickle read with encoding='latin1'
    data = data.encode('latin1')
  return np.frombuffer(bytes(data), dtype=dtype)[0]


def _encode_bytes(text, encoding='latin1'):
  """``_codecs.encode(str, 'latin1')``: how protocol-2 pickles spell a ``bytes`` object."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
    raise UnsafeCheckpointError('refusing _codecs.encode of anything but a latin1 string')
  return text.encode(encoding)


# Plain data saved next to state_dicts by training scripts, read without running their code.
PLAIN_DATA_GLOBALS = {
    ('_codecs', 'encode'): _encode_bytes,
    ('yacs.config', 'CfgNode'): ConfigNode,
    ('numpy.core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy._core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy', 'dtype'): _numpy_dtype,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
}

_ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    **PLAIN_DATA_GLOBALS,
}


class _RestrictedUnpickler(pickle.Unpickler):

  def __init__(self, file, load_storage, source: str):
    super().__init__(file, encoding='latin1')
    self._load_storage = load_storage
    self._source = source

  def find_class(self, module: str, name: str):
    if module == '__builtin__':  # protocol-2 pickles name Python 3's builtins the Python 2 way
      module = 'builtins'
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module in ('torch', 'torch.storage') and name in STORAGE_DTYPES:
      return _StorageType(name)
    raise UnsafeCheckpointError(_unsafe_message(self._source, f'{module}.{name}'))

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] != 'storage':
      raise pickle.UnpicklingError(f'{self._source}: unsupported persistent id {pid!r}')
    return self._load_storage(pid)


def _unsafe_message(source: str, global_name: str) -> str:
  looks_like_module = not global_name.startswith(('builtins.', 'os.', 'posix.', 'subprocess.'))
  msg = (f'{source}: refusing to load; the pickle references {global_name!r}, which is not part '
         f'of a state_dict (loading it would run code from the file).')
  if looks_like_module:
    msg += (' It looks like a pickled whole model (torch.save(model)). Re-save it as a state_dict '
            'in the codebase that defined the model, with a file you trust: '
            "torch.save(torch.load(PATH, weights_only=False).state_dict(), 'state_dict.pth')")
  return msg


def load(path: str) -> Any:
  """Loads the object pickled in a ``.pth`` file; tensors become NumPy arrays."""
  path = str(path)
  if zipfile.is_zipfile(path):
    return _load_zip(path)
  with open(path, 'rb') as f:
    return _load_legacy(f, path)


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith('data.pkl')]
    if not pkl:
      raise ValueError(f'{path}: a zip file without data.pkl is not a PyTorch checkpoint')
    root = pkl[0][:-len('data.pkl')]
    byteorder = 'little'
    if root + 'byteorder' in names:
      byteorder = zf.read(root + 'byteorder').decode().strip()
    cache: dict[str, np.ndarray] = {}

    def load_storage(pid):
      _, storage_type, key, _location, _numel = pid[:5]
      if key not in cache:
        raw = zf.read(f'{root}data/{key}')
        dtype = storage_type.dtype.newbyteorder('<' if byteorder == 'little' else '>')
        cache[key] = np.frombuffer(raw, dtype=dtype).astype(storage_type.dtype)
      return cache[key]

    with zf.open(pkl[0]) as f:
      return _RestrictedUnpickler(io.BytesIO(f.read()), load_storage, path).load()


def _load_legacy(f, path: str) -> Any:

  def header(what):
    try:
      return _RestrictedUnpickler(f, _no_storage, path).load()
    except (EOFError, pickle.UnpicklingError) as e:
      if isinstance(e, UnsafeCheckpointError):
        raise
      raise ValueError(f'{path}: not a PyTorch checkpoint (unreadable {what}: {e})') from e

  def _no_storage(pid):
    raise pickle.UnpicklingError(f'{path}: unexpected storage in the file header')

  magic = header('magic number')
  if magic != LEGACY_MAGIC:
    raise ValueError(f'{path}: not a PyTorch checkpoint (bad magic number {magic!r})')
  header('protocol version')
  header('system info')
  storages: dict[str, tuple[_StorageType, int]] = {}
  views = []

  def record_storage(pid):
    _, storage_type, key, _location, numel, view = (pid + (None,))[:6]
    storages[key] = (storage_type, numel)
    views.append((key, view))
    return _LazyStorage(key, view)

  obj = _RestrictedUnpickler(f, record_storage, path).load()
  keys = _RestrictedUnpickler(f, _no_storage, path).load()
  data: dict[str, np.ndarray] = {}
  for key in keys:
    storage_type, _ = storages[key]
    (numel,) = struct.unpack('<q', f.read(8))
    nbytes = numel * storage_type.dtype.itemsize
    raw = f.read(nbytes)
    if len(raw) != nbytes:
      raise ValueError(f'{path}: truncated file (storage {key} has {len(raw)} of {nbytes} bytes)')
    data[key] = np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder('<')).astype(
        storage_type.dtype)
  return _resolve_lazy(obj, data)


class _LazyStorage:
  """Placeholder for a legacy-format storage whose bytes come after the object pickle."""

  def __init__(self, key, view):
    self.key, self.view = key, view


class _LazyTensor:

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _resolve_lazy(obj, data):
  if isinstance(obj, _LazyTensor):
    flat = data[obj.storage.key]
    if obj.storage.view is not None:  # (view_key, offset, size): a slice of a bigger storage
      _, view_offset, view_size = obj.storage.view
      flat = flat[view_offset:view_offset + view_size]
    return _strided_copy(flat, obj.offset, obj.size, obj.stride)
  if isinstance(obj, dict):
    out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _resolve_lazy(v, data)
    return out
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve_lazy(v, data) for v in obj)
  return obj
