"""Docs, docstrings and comments stand alone: users have neither the development notes nor the
development machine, so no tracked file may cite them (the paper and the official repository's
file are cited instead) or name an absolute path of a development machine."""

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Development notes, and home or work folders of a development machine (case-insensitive). The
# names are assembled from pieces so that this file does not itself contain what it forbids.
# The bpbreid and drop note names are also those of this project's own method pages: a link to
# docs/<name> (or a relative markdown link inside docs/) is fine, a bare citation is not.
_MD = r'\.md'
_NOTES = [r'methods' + _MD, r'shared/' + 'docs', r'\.\./' + 'shared', r'reid' + '-protocols',
          r'jax' + '-stack']
_OWN_PAGES = r'(?<!docs/)(?<!\]\()\b(?:bpbreid|drop)' + _MD
_MACHINE = [r'/' + d + '/' for d in ('work', 'root', 'home')]
BANNED = re.compile('|'.join(_NOTES + [_OWN_PAGES] + _MACHINE), re.IGNORECASE)
THIS_FILE = os.path.relpath(os.path.abspath(__file__), ROOT)


def tracked_files() -> list[str]:
  try:
    out = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, check=True,
                         timeout=60).stdout
  except (OSError, subprocess.CalledProcessError):
    pytest.skip('not a git checkout')
  return [name for name in out.decode().split('\0') if name]


def test_no_tracked_file_cites_development_notes_or_machine_paths():
  files = tracked_files()
  assert 'README.md' in files
  hits = []
  for name in files:
    if name == THIS_FILE:
      continue
    try:
      with open(os.path.join(ROOT, name), encoding='utf-8') as f:
        lines = f.read().splitlines()
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
      continue  # binary files; files deleted but not yet committed
    hits += [f'{name}:{i}: {line.strip()}' for i, line in enumerate(lines, 1)
             if BANNED.search(line)]
  assert not hits, ('cite the paper and the official repository\'s file instead of development '
                    'notes or machine paths:\n' + '\n'.join(hits))


def test_the_pattern_catches_each_banned_form():
  md, sh = '.' + 'md', 'sh' + 'ared'
  for text in (f'see methods{md} §2', f'../{sh}/docs/x', f'BPBREID{md}', f'drop{md}',
               f'bpbreid{md} b.5', f'(see drop{md} §2)', 'reid' + '-protocols',
               f'jax' + f'-stack{md} B.3', 'cd /' + 'work/main', '/' + 'root/.cache', '/' + 'home/user'):
    assert BANNED.search(text), text
  for text in ('docs/apnet.md', 'VlSomers/bpbreid torchreid/models/bpbreid.py', 'workdir/demo',
               'gs://bucket/work', f'[docs/bpbreid{md}](docs/bpbreid{md})',
               f'see [BPBreID](bpbreid{md})', f'docs/drop{md}'):
    assert not BANNED.search(text), text
