"""The one error policy of reid_jax's command lines (``reid_jax.main``, ``prepare``, ``extract``,
``convert``, ``export``).

``run(main)`` is ``absl.app.run(main)`` that turns user mistakes into one ``error: ...`` paragraph
on stderr and exit status 2, without a Python traceback:

* while parsing flags: a malformed flag value, an unknown ``--config.x.y`` field, a config file
  that cannot be loaded or whose ``get_config(arg)`` rejects its argument (``--config=f.py:foo=1``);
* in ``main``: ``UserError`` and the exception types our validation raises (``ValueError``,
  ``KeyError``, ``FileNotFoundError``, ``NotADirectoryError``, ``pickle.UnpicklingError`` for a
  PyTorch file that is not a plain state dict), e.g. an unknown dataset, a dataset that is not
  prepared, a missing or empty checkpoint directory, a checkpoint of another method.

Anything else keeps its traceback. ``REID_JAX_TRACEBACK=1`` in the environment keeps the traceback
of user errors too (for debugging).
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from typing import Callable

from absl import app, flags

TRACEBACK_ENV = 'REID_JAX_TRACEBACK'
EXIT_USER_ERROR = 2


class UserError(Exception):
  """A mistake in the command line, the config or the files it names; the message says which."""


USER_ERRORS = (UserError, ValueError, KeyError, FileNotFoundError, NotADirectoryError,
               pickle.UnpicklingError)


def traceback_requested() -> bool:
  return os.environ.get(TRACEBACK_ENV, '').lower() not in ('', '0', 'false', 'no')


def message(error: BaseException) -> str:
  """The exception's text: a ``KeyError``'s message without its quotes; a traceback that an
  exception carries inside its message (ml_collections does this for config files) reduced to its
  last line."""
  if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
    text = error.args[0]
  else:
    text = str(error) or type(error).__name__
  if 'Traceback (most recent call last)' in text:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    head = text.split('Error whilst parsing config file', 1)[0].strip().rstrip(':')
    last = re.sub(r'^[\w.]+(Error|Exception): ', '', lines[-1])
    text = f'{head}: {last}' if head else last
  return text


def fail(text: str) -> None:
  print(f'error: {text}', file=sys.stderr)
  print(f'(set {TRACEBACK_ENV}=1 to see the Python traceback)', file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def _config_overrides(argv) -> list[str]:
  return [a for a in argv[1:] if re.match(r'^--?(no)?\w+\.', a)]


def _check_loaded_configs(flag_values) -> None:
  """ml_collections defers a config file's load error to its first use; surface it now."""
  for name in list(flag_values):
    value = flag_values[name].value
    if type(value).__name__ == '_ErrorConfig':
      error = object.__getattribute__(value, '_error')
      text = ' '.join(str(error).split())
      raise UserError(f'--{name}: cannot load the config file: {text}')


def parse_flags_with(parser: Callable[[list[str]], list[str]]) -> Callable[[list[str]], list[str]]:
  """Wraps an absl flags parser: any failure while parsing is a user error."""

  def parse(argv):
    try:
      rest = parser(argv)
      _check_loaded_configs(flags.FLAGS)
      return rest
    except UserError:
      raise
    except Exception as e:  # noqa: BLE001  (flags and config files are user input)
      if traceback_requested():
        raise
      text = message(e)
      if isinstance(e, AttributeError):  # ml_collections: an override names no config field
        words = re.findall(r'[A-Za-z_]\w*', text)
        key = words[0] if words else text
        named = [a for a in _config_overrides(argv) if re.search(rf'\.{re.escape(key)}\b', a)]
        guess = re.search(r'Did you mean "(\w+)"', text)
        text = (f'{" ".join(named) or "a --config override"}: the config has no field {key!r}'
                + (f'; did you mean {guess.group(1)!r}?' if guess else
                   ' (see configs/*.py and reid_jax/config_lib.py)'))
      elif isinstance(e, flags.Error) and not text.startswith('flag '):
        text = f'flags: {text}'
      fail(text)
    return []  # unreachable: fail() exits

  return parse


def run(main: Callable, *, flags_parser: Callable | None = None) -> None:
  """``absl.app.run(main)`` with the error policy above."""
  parser = parse_flags_with(flags_parser or (lambda argv: flags.FLAGS(argv)))
  try:
    app.run(main, flags_parser=parser)
  except USER_ERRORS as e:
    if traceback_requested():
      raise
    fail(message(e))
