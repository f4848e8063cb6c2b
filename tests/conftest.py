"""Test session set-up: 8 simulated CPU devices (before jax is imported), parsed absl flags
(grain reads flags; outside absl.app they are otherwise unparsed), and a check that the session
leaves nothing behind in the system temp dir.

The session runs with ``TMPDIR`` (and ``tempfile.tempdir``) pointing to a private folder, so pytest's
own temp folders and everything the tests or their subprocesses put in "the temp dir" land there.
At the end, anything in it besides pytest's folders is reported and fails the session (exit
status 1); the folder is then removed.
"""

import os
import shutil
import sys
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

_SESSION_TMP = tempfile.mkdtemp(prefix='reid_jax_tests_')
os.environ['TMPDIR'] = _SESSION_TMP
tempfile.tempdir = _SESSION_TMP
# PyTorch (the numerical reference) keeps a compile cache in the temp dir; give it a known place
# in the session folder, removed with it.
_TORCH_CACHE = 'torch_cache'
os.environ['TORCHINDUCTOR_CACHE_DIR'] = os.path.join(_SESSION_TMP, _TORCH_CACHE)

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


def leftovers(folder: str) -> list[str]:
  """Entries of ``folder`` that are not pytest's own temp folders."""
  return sorted(e for e in os.listdir(folder)
                if not e.startswith('pytest-of-') and e != _TORCH_CACHE)


def pytest_sessionfinish(session, exitstatus):
  synthetic_tiny = sys.modules.get('tests.synthetic_tiny')
  if synthetic_tiny is not None:
    synthetic_tiny.cleanup()
  left = leftovers(_SESSION_TMP)
  if left:
    print(f'\nerror: the test session left {len(left)} entries in the temp dir: '
          f'{", ".join(left[:20])}', file=sys.stderr)
    session.exitstatus = 1
  shutil.rmtree(_SESSION_TMP, ignore_errors=True)
