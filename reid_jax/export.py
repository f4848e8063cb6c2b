"""Export a checkpoint's test-time feature function to ONNX or a TensorFlow SavedModel.

  python -m reid_jax.export --config=configs/baseline.py --checkpoint=DIR \\
      --format=onnx|savedmodel --out=PATH [--input_dtype=uint8|float32]

The exported function is ``reid_jax.FeatureExtractor.function``: the method's eval-mode network
with ``config.eval.flip`` and ``config.eval.normalize`` applied as evaluation applies them
(``reid_jax.extract.eval_features``). Its one input ``images`` is NHWC ``[batch, H, W, 3]`` at
``config.input.size`` with a dynamic batch dimension:

* ``uint8`` (default): RGB pixels 0..255, normalised inside the graph as ``(x / 255 - mean) /
  std`` with ``config.input.mean``/``std``; resize the images to ``H x W`` beforehand (the
  config's ``test_interpolation``, as ``FeatureExtractor.prepare`` does);
* ``float32``: images already normalised, as ``FeatureExtractor.prepare`` returns them.

Outputs are named: ``feat`` (``[batch, D]`` float32, L2-normalised when ``config.eval.normalize``)
for vector methods; for part-based methods every entry of the dict that ``models.embed`` returns,
by its key (``feat [batch, P, D]`` normalised per part, ``visibility [batch, P]``).

Exporters:

* ONNX with ``jax2onnx`` (PyPI; converts the jaxpr to ONNX operators, no TensorFlow involved).
  Chosen because it is the maintained JAX-to-ONNX converter: the older route through jax2tf and
  tf2onnx no longer exists since jax2tf only emits ``XlaCallModule`` (StableHLO) ops, which
  tf2onnx cannot read. Recent jax2onnx releases pin ``orbax-checkpoint < 0.11.37`` while reid_jax
  needs ``>= 0.12.8``, so pip resolves ``reid_jax[export]`` to the newest release without that pin
  (0.13.0 at the time of writing, tested with jax 0.10.2 and onnxruntime 1.32). Written as one
  ``.onnx`` file (weights inside) with opset ``--opset``; check it with ``onnxruntime``. Two
  reid_jax layers keep the trace convertible: convolutions are ``layers.Conv`` (jax2onnx's own
  ``nnx.Conv`` shim rejects explicit padding pairs) and max pooling is traced as strided slices
  (``layers.portable_max_pool``; ONNX Runtime pools over at most three spatial axes).
* SavedModel with ``jax.experimental.jax2tf`` (native serialization: the StableHLO of the
  function inside an ``XlaCallModule`` op, lowered for ``--platforms``, CPU, CUDA and TPU by
  default); the weights are ``tf.Variable``s of the module. Serving signature
  ``serving_default(images) -> {feat, ...}``; load it with ``tf.saved_model.load`` and keep a
  reference to the loaded object while calling it (it owns the variables).

Both carry the preprocessing the input expects (``reid_jax.input_size``, ``mean``, ``std``,
``test_interpolation``, ``flip``, ``normalize``): ONNX metadata properties, the SavedModel's
``metadata`` variables.

Both are written to a temporary path next to ``--out`` and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Callable

import numpy as np

FORMATS = ('onnx', 'savedmodel')
INSTALL_HINT = "pip install 'reid_jax[export]'"
DEFAULT_PLATFORMS = ('cpu', 'cuda', 'tpu')
DEFAULT_OPSET = 21
BATCH = 'batch'  # name of the dynamic batch dimension


def _user_error(text: str) -> Exception:
  from reid_jax.cli import UserError  # noqa: PLC0415
  return UserError(text)


def output_names(extractor) -> list[str]:
  """Names of the exported outputs, in the order of ``jax.tree.leaves`` of the function's output:
  ``['feat']`` for a vector method, the dict keys (sorted, nested ones joined by ``/``) for a
  part-based one."""
  import jax  # noqa: PLC0415
  h, w = extractor.image_size
  out = jax.eval_shape(extractor.function('float32'), extractor.state,
                       jax.ShapeDtypeStruct((1, h, w, 3), np.float32))
  if not isinstance(out, dict):
    if not isinstance(out, jax.ShapeDtypeStruct):
      raise ValueError(f'method {extractor.config.model.name!r}: the test feature must be an array '
                       f'or a dict of arrays to export, got {jax.tree.structure(out)}')
    return ['feat']
  paths = jax.tree_util.tree_flatten_with_path(out)[0]
  return [jax.tree_util.keystr(path, simple=True, separator='/') for path, _ in paths]


def flat_function(extractor, input_dtype: str) -> tuple[Callable, list[str]]:
  """``(f(state, images) -> tuple of outputs, their names)``: the extractor's function with its
  output flattened in the order ``output_names`` gives."""
  import jax  # noqa: PLC0415
  features = extractor.function(input_dtype)
  names = output_names(extractor)

  def flat(state, images):
    return tuple(jax.tree.leaves(features(state, images)))

  return flat, names


def _metadata(extractor, input_dtype: str) -> dict[str, str]:
  c = extractor.config
  return {'reid_jax.method': str(c.model.name), 'reid_jax.input_dtype': input_dtype,
          'reid_jax.input_size': 'x'.join(str(v) for v in extractor.image_size),
          'reid_jax.mean': ','.join(str(float(v)) for v in c.input.mean),
          'reid_jax.std': ','.join(str(float(v)) for v in c.input.std),
          'reid_jax.test_interpolation': str(c.input.test_interpolation),
          'reid_jax.flip': str(c.eval.flip), 'reid_jax.normalize': str(bool(c.eval.normalize))}


def _check_input_dtype(input_dtype: str) -> None:
  from reid_jax.extract import INPUT_DTYPES  # noqa: PLC0415
  if input_dtype not in INPUT_DTYPES:
    raise ValueError(f'--input_dtype must be one of {INPUT_DTYPES}, got {input_dtype!r}')


@contextlib.contextmanager
def _quiet_jax2onnx():
  """Silences two loggers while converting: jax2onnx's plugin loader, which logs a traceback for
  each plugin that does not import (its dm_pix plugins under jax >= 0.10; none is used here), and
  onnx_ir's serializer, which warns about untyped shape constants it writes anyway."""
  loggers = [logging.getLogger(name) for name in ('jax2onnx.plugins.plugin_system',
                                                   'onnx_ir.serde')]
  levels = [log.level for log in loggers]
  for log in loggers:
    log.setLevel(logging.ERROR)
  try:
    yield
  finally:
    for log, level in zip(loggers, levels):
      log.setLevel(level)


def _load_jax2onnx_plugins() -> None:
  """Registers only jax2onnx's ``jax`` and ``flax`` plugins, the ones reid_jax models need.

  On first use jax2onnx imports every plugin it ships, ~10 s of CPU, mostly its equinox plugins
  and model examples, which compile at import. Where its plugin loader has the layout known here
  (0.13), the two sub-packages are imported and the loader is marked done, so the others are
  skipped in this process; otherwise jax2onnx loads all of them as usual.
  """
  try:
    from jax2onnx.plugins import plugin_system  # noqa: PLC0415
    root = pathlib.Path(plugin_system.__file__).parent
    subtrees = [root / 'jax', root / 'flax']
    if (plugin_system._already_imported_plugins  # noqa: SLF001
        or not all(tree.is_dir() for tree in subtrees)):
      return
    for tree in subtrees:
      plugin_system._import_tree(tree, f'jax2onnx.plugins.{tree.name}')  # noqa: SLF001
    plugin_system._already_imported_plugins = True  # noqa: SLF001
  except (ImportError, AttributeError):
    return


def require(fmt: str) -> None:
  """Fails with the install command when ``fmt``'s exporter is not installed."""
  if fmt not in FORMATS:
    raise ValueError(f'--format must be one of {FORMATS}, got {fmt!r}')
  modules = ('jax2onnx', 'onnx') if fmt == 'onnx' else ('tensorflow',
                                                       'jax.experimental.jax2tf')
  for name in modules:
    try:
      with _quiet_jax2onnx():
        __import__(name)
    except ImportError as e:
      raise _user_error(f'--format={fmt} needs the Python package {name.split(".")[0]!r}, which '
                        f'cannot be imported ({e}); install the exporters with: '
                        f'{INSTALL_HINT}') from e


# ------------------------------------------------------------------------------- atomic output
def _temporary_sibling(path: str, directory: bool) -> str:
  parent = os.path.dirname(os.path.abspath(path)) or '.'
  os.makedirs(parent, exist_ok=True)
  prefix = f'.{os.path.basename(path)}.tmp-'
  if directory:
    return tempfile.mkdtemp(prefix=prefix, dir=parent)
  fd, tmp = tempfile.mkstemp(prefix=prefix, dir=parent)
  os.close(fd)
  return tmp


def _write_atomic(path: str, write: Callable[[str], None], *, directory: bool) -> None:
  """``write(tmp)`` into a temporary sibling of ``path``, then rename it to ``path`` (replacing a
  previous export); nothing is left behind when ``write`` fails."""
  if os.path.exists(path) and os.path.isdir(path) != directory:
    raise ValueError(f'--out {path!r} exists and is a {"folder" if os.path.isdir(path) else "file"}'
                     f'; a {"SavedModel is a folder" if directory else "ONNX model is one file"}')
  tmp = _temporary_sibling(path, directory)
  old = None
  try:
    write(tmp)
    if directory and os.path.exists(path):
      old = tmp + '.old'
      os.replace(path, old)  # a folder cannot be replaced in one rename
    os.replace(tmp, path)
  except BaseException:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
    elif os.path.exists(tmp):
      os.remove(tmp)
    if old and os.path.exists(old) and not os.path.exists(path):
      os.replace(old, path)
    raise
  if old:
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------- ONNX
def export_onnx(extractor, path: str, *, input_dtype: str = 'uint8',
                opset: int = DEFAULT_OPSET) -> list[str]:
  """Writes ``extractor``'s test-time feature function as an ONNX model at ``path``; returns the
  output names. Input ``images [batch, H, W, 3]`` of ``input_dtype``; weights are initializers."""
  _check_input_dtype(input_dtype)
  import jax  # noqa: PLC0415
  flat, names = flat_function(extractor, input_dtype)
  state = extractor.state
  h, w = extractor.image_size
  spec = jax.ShapeDtypeStruct((BATCH, h, w, 3), np.dtype(input_dtype))
  require('onnx')
  import jax2onnx  # noqa: PLC0415
  import onnx  # noqa: PLC0415
  from reid_jax.models import layers  # noqa: PLC0415
  with _quiet_jax2onnx(), layers.portable_max_pool():
    _load_jax2onnx_plugins()
    model = jax2onnx.to_onnx(lambda images: flat(state, images), [spec],
                             model_name=f'reid_jax_{extractor.config.model.name}', opset=opset,
                             input_names=['images'], output_names=names)
  for key, value in _metadata(extractor, input_dtype).items():
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value

  def write(tmp):
    onnx.save_model(model, tmp)

  _write_atomic(path, write, directory=False)
  return names


# ---------------------------------------------------------------------------------- SavedModel
def export_savedmodel(extractor, path: str, *, input_dtype: str = 'uint8',
                      platforms: tuple[str, ...] = DEFAULT_PLATFORMS) -> list[str]:
  """Writes ``extractor``'s test-time feature function as a TensorFlow SavedModel folder at
  ``path``; returns the output names. Signature ``serving_default(images [batch, H, W, 3]
  input_dtype) -> {name: tensor}``, also ``loaded.serve(images)``; ``loaded.metadata`` holds the
  preprocessing the input expects (size, mean, std, interpolation) as string variables."""
  _check_input_dtype(input_dtype)
  require('savedmodel')
  import jax  # noqa: PLC0415
  import tensorflow as tf  # noqa: PLC0415
  from jax.experimental import jax2tf  # noqa: PLC0415

  flat, names = flat_function(extractor, input_dtype)
  leaves, treedef = jax.tree.flatten(extractor.state)
  h, w = extractor.image_size

  def on_leaves(weights, images):
    return dict(zip(names, flat(jax.tree.unflatten(treedef, weights), images)))

  converted = jax2tf.convert(on_leaves, polymorphic_shapes=[None, f'(b, {h}, {w}, 3)'],
                             with_gradient=False,
                             native_serialization_platforms=tuple(platforms))
  module = tf.Module()
  module.weights = [tf.Variable(np.asarray(x), trainable=False, name=f'w{i}')
                    for i, x in enumerate(leaves)]

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None, h, w, 3], tf.as_dtype(input_dtype), name='images')])
  def serve(images):
    return converted(module.weights, images)

  module.serve = serve
  module.metadata = {k: tf.Variable(v, trainable=False, dtype=tf.string)
                     for k, v in _metadata(extractor, input_dtype).items()}

  def write(tmp):
    tf.saved_model.save(module, tmp, signatures={'serving_default': serve})

  _write_atomic(path, write, directory=True)
  return names


# -------------------------------------------------------------------------------- command line
def export(config, checkpoint: str, fmt: str, out: str, *, input_dtype: str = 'uint8',
           step: int | None = None, opset: int = DEFAULT_OPSET,
           platforms: tuple[str, ...] = DEFAULT_PLATFORMS) -> list[str]:
  """Restores ``checkpoint`` with ``config`` and exports it in ``fmt`` to ``out``."""
  _check_input_dtype(input_dtype)
  require(fmt)  # before the (slow) restore
  from reid_jax.feature_extractor import FeatureExtractor  # noqa: PLC0415
  extractor = FeatureExtractor(config, checkpoint, step=step, batch_size=1)
  if fmt == 'onnx':
    return export_onnx(extractor, out, input_dtype=input_dtype, opset=opset)
  return export_savedmodel(extractor, out, input_dtype=input_dtype, platforms=platforms)


def main(argv: list[str]) -> None:
  from absl import flags  # noqa: PLC0415
  f = flags.FLAGS
  if len(argv) > 1:
    raise _user_error(f'unexpected arguments {argv[1:]}; every option is a --flag')
  names = export(f.config, f.checkpoint, f.format, f.out, input_dtype=f.input_dtype,
                 step=f.step, opset=f.opset, platforms=tuple(f.platforms))
  h, w = (int(v) for v in f.config.input.size)
  print(f'wrote {f.format} {f.out}: input images [batch, {h}, {w}, 3] {f.input_dtype}, '
        f'outputs {", ".join(names)}')


def _define_flags() -> None:
  from absl import flags  # noqa: PLC0415
  from ml_collections import config_flags  # noqa: PLC0415
  config_flags.DEFINE_config_file('config', None, 'configs/<method>.py[:arg]', lock_config=False)
  flags.DEFINE_string('checkpoint', None, 'reid_jax checkpoint folder (training\'s '
                      'WORKDIR/checkpoints or reid_jax.convert\'s output)')
  flags.DEFINE_enum('format', None, list(FORMATS), 'onnx (one file) or savedmodel (a folder)')
  flags.DEFINE_string('out', None, 'output .onnx file or SavedModel folder')
  flags.DEFINE_enum('input_dtype', 'uint8', ['uint8', 'float32'],
                    'uint8: RGB 0..255, normalised inside; float32: already normalised')
  flags.DEFINE_integer('step', None, 'checkpoint step (default: the latest)')
  flags.DEFINE_integer('opset', DEFAULT_OPSET, 'ONNX opset')
  flags.DEFINE_list('platforms', list(DEFAULT_PLATFORMS),
                    'SavedModel: platforms the XlaCallModule is lowered for')
  flags.mark_flags_as_required(['config', 'checkpoint', 'format', 'out'])


if __name__ == '__main__':
  from reid_jax import cli  # noqa: PLC0415
  _define_flags()
  cli.run(main)
