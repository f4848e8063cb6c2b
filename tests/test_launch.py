"""launch/*.sh: exact --dry-run command lines, errors, --help, and that dry-run runs nothing.

Every script runs in a subprocess with a fake ``gcloud`` (and ``python3``, ``git``, ``uv``) first
on PATH that records each call to a file; dry-runs must leave that file absent. The remote shell
scripts that ``gcloud ... ssh --command=...`` would run on the workers are also run here, in a
sandbox home folder with fake tools, to check that the two layers of quoting deliver the main
job's arguments unchanged.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAUNCH = ROOT / 'launch'
SCRIPTS = ['create.sh', 'setup.sh', 'stage_data.sh', 'run.sh', 'logs.sh', 'delete.sh',
           'gpu_single_node.sh']
# Env vars the scripts read; cleared so that the caller's environment cannot leak in.
SETTINGS = ['TPU_NAME', 'ZONE', 'PROJECT', 'ACCELERATOR_TYPE', 'RUNTIME_VERSION', 'TPU_MODE',
            'QUEUED_RESOURCE', 'SPOT', 'DRY_RUN', 'REPO_URL', 'BRANCH', 'REMOTE_DIR',
            'PYTHON_VERSION', 'EXTRAS', 'WORKER', 'BUCKET', 'DATA_GCS', 'DATASETS',
            'LOCAL_DATA_DIR', 'CONFIG', 'WORKDIR', 'BACKGROUND', 'LOG_FILE', 'LOG_LINES', 'FOLLOW',
            'ASSUME_YES', 'DATA_DIR', 'VENV', 'PYTHON', 'NUM_PROCESSES', 'GPUS_PER_PROCESS',
            'COORDINATOR_PORT', 'LOG_DIR', 'SKIP_INSTALL']

RECORDER = """#!/bin/bash
# Fake {name}: records its arguments, one call per line, and succeeds.
printf '{name}' >> "$FAKE_CALLS"
printf ' [%s]' "$@" >> "$FAKE_CALLS"
echo >> "$FAKE_CALLS"
"""


def _write_exe(path: pathlib.Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(0o755)


@pytest.fixture
def sandbox(tmp_path):
  """(env, calls_file): a clean environment whose PATH starts with recording fakes."""
  fake_bin = tmp_path / 'fakebin'
  for name in ('gcloud', 'python3', 'git', 'uv', 'tmux'):
    _write_exe(fake_bin / name, RECORDER.format(name=name))
  calls = tmp_path / 'calls.log'
  env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
  env.update(PATH=f'{fake_bin}:{os.environ["PATH"]}', FAKE_CALLS=str(calls),
             HOME=str(tmp_path / 'home'))
  (tmp_path / 'home').mkdir()
  return env, calls


def launch(sandbox, script, *args, extra_env=None, check_rc=0):
  env, calls = sandbox
  env = dict(env, **(extra_env or {}))
  proc = subprocess.run(['bash', str(LAUNCH / script), *args], env=env, capture_output=True,
                        text=True, timeout=60, cwd=env['HOME'])
  if check_rc is not None:
    assert proc.returncode == check_rc, (proc.stdout, proc.stderr)
  return proc


def dry(sandbox, script, *args, extra_env=None):
  """Dry-run lines (stdout), asserting that nothing was executed."""
  proc = launch(sandbox, script, '--dry-run', *args, extra_env=extra_env)
  assert not sandbox[1].exists(), f'dry-run executed: {sandbox[1].read_text()}'
  return proc.stdout.splitlines()


def remote_script(line: str) -> str:
  """The --command=... of a printed `gcloud compute tpus tpu-vm ssh` line."""
  argv = shlex.split(line)
  assert argv[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh'], argv
  (command,) = [a for a in argv if a.startswith('--command=')]
  return command[len('--command='):]


def parses(script: str) -> None:
  for shell in ('bash', 'sh'):
    if shutil.which(shell):
      proc = subprocess.run([shell, '-n', '-c', script], capture_output=True, text=True)
      assert proc.returncode == 0, (shell, proc.stderr, script)


# ------------------------------------------------------------------------------------ create
@pytest.mark.parametrize('accel, runtime', [
    ('v4-32', 'tpu-ubuntu2204-base'),
    ('v5litepod-16', 'v2-alpha-tpuv5-lite'),
    ('v6e-16', 'v2-alpha-tpuv6e'),
])
def test_create_tpu_vm_runtime_per_generation(sandbox, accel, runtime):
  assert dry(sandbox, 'create.sh', '--tpu=reid', '--zone=us-central2-b',
             f'--accelerator-type={accel}') == [
      f'gcloud compute tpus tpu-vm create reid --zone=us-central2-b --accelerator-type={accel} '
      f'--version={runtime}']


def test_create_from_env_flags_win(sandbox):
  env = {'TPU_NAME': 'envtpu', 'ZONE': 'envzone', 'ACCELERATOR_TYPE': 'v4-8',
         'PROJECT': 'proj', 'RUNTIME_VERSION': 'my-runtime'}
  assert dry(sandbox, 'create.sh', extra_env=env) == [
      'gcloud compute tpus tpu-vm create envtpu --zone=envzone --project=proj '
      '--accelerator-type=v4-8 --version=my-runtime']
  assert dry(sandbox, 'create.sh', '--zone', 'flagzone', '--spot', extra_env=env) == [
      'gcloud compute tpus tpu-vm create envtpu --zone=flagzone --project=proj '
      '--accelerator-type=v4-8 --version=my-runtime --spot']


def test_create_queued_with_extra_gcloud_flags(sandbox):
  lines = dry(sandbox, 'create.sh', '--tpu=reid', '--zone=us-east5-b', '--accelerator-type=v6e-16',
              '--mode=queued', '--spot', '--', '--labels=team=reid', "--description=Bo's run")
  assert lines == [
      'gcloud compute tpus queued-resources create reid --node-id=reid --zone=us-east5-b '
      '--accelerator-type=v6e-16 --runtime-version=v2-alpha-tpuv6e --spot --labels=team=reid '
      "'--description=Bo'\\''s run'"]
  assert shlex.split(lines[0])[-1] == "--description=Bo's run"
  assert dry(sandbox, 'create.sh', '--tpu=reid', '--zone=z', '--accelerator-type=v4-8',
             '--mode=queued', '--queued-resource=qr1') == [
      'gcloud compute tpus queued-resources create qr1 --node-id=reid --zone=z '
      '--accelerator-type=v4-8 --runtime-version=tpu-ubuntu2204-base']


def test_create_errors(sandbox):
  proc = launch(sandbox, 'create.sh', '--tpu=a', '--zone=z', '--accelerator-type=v3-8',
                '--dry-run', check_rc=2)
  assert "no default runtime version for accelerator type 'v3-8'" in proc.stderr
  assert '--runtime-version (or env RUNTIME_VERSION)' in proc.stderr
  proc = launch(sandbox, 'create.sh', '--tpu=a', '--zone=z', '--accelerator-type=v4-8',
                '--mode=gke', '--dry-run', check_rc=2)
  assert '--mode must be one of: tpu-vm queued' in proc.stderr
  assert proc.stdout == ''


# ----------------------------------------------------------------------- required / help / misc
@pytest.mark.parametrize('script, args, named', [
    ('create.sh', [], ['--tpu (or env TPU_NAME)', '--zone (or env ZONE)',
                       '--accelerator-type (or env ACCELERATOR_TYPE)']),
    ('setup.sh', ['--tpu=a', '--zone=z'], ['--repo (or env REPO_URL)']),
    ('stage_data.sh', ['--tpu=a', '--zone=z'], ['--data-gcs (or env DATA_GCS)',
                                                '--bucket (or env BUCKET)']),
    ('run.sh', ['--zone=z'], ['--tpu (or env TPU_NAME)', '--config (or env CONFIG)',
                              '--workdir (or env WORKDIR)']),
    ('logs.sh', ['--tpu=a'], ['--zone (or env ZONE)']),
    ('delete.sh', ['--zone=z'], ['--tpu (or env TPU_NAME)']),
    ('gpu_single_node.sh', ['--config=c'], ['--workdir (or env WORKDIR)']),
])
def test_missing_required_settings_are_named(sandbox, script, args, named):
  for dry_run in ([], ['--dry-run']):
    proc = launch(sandbox, script, *args, *dry_run, check_rc=2)
    for text in named:
      assert text in proc.stderr
    assert proc.stdout == ''
  assert not sandbox[1].exists()


@pytest.mark.parametrize('script', SCRIPTS)
def test_help(sandbox, script):
  proc = launch(sandbox, script, '--help')
  assert proc.stdout.startswith(f'Usage: launch/{script}')
  assert '--dry-run' in proc.stdout and '--help' in proc.stdout
  assert not sandbox[1].exists()
  assert launch(sandbox, script, '-h').stdout == proc.stdout


@pytest.mark.parametrize('args, message', [
    (['--bogus=1'], "unknown flag '--bogus'"),
    (['stray'], "unexpected argument 'stray'"),
    (['--zone'], '--zone needs a value'),
    (['--dry-run=yes'], '--dry-run takes no value'),
    (['--config.x=1'], "unknown flag '--config.x=1'"),  # overrides only where a job runs
])
def test_bad_arguments(sandbox, args, message):
  proc = launch(sandbox, 'delete.sh', '--tpu=a', *args, check_rc=2)
  assert message in proc.stderr
  assert not sandbox[1].exists()


def test_switch_env_must_be_0_or_1(sandbox):
  proc = launch(sandbox, 'delete.sh', '--tpu=a', '--zone=z', extra_env={'DRY_RUN': 'yes'},
                check_rc=2)
  assert "env DRY_RUN must be 0 or 1 (got 'yes')" in proc.stderr
  assert not sandbox[1].exists()
  assert dry(sandbox, 'delete.sh', '--tpu=a', '--zone=z', extra_env={'ASSUME_YES': '1'}) == [
      'gcloud compute tpus tpu-vm delete a --zone=z --quiet']


def test_not_dry_run_executes_gcloud(sandbox):
  """The fake gcloud does record real runs (so the dry-run checks above can fail)."""
  proc = launch(sandbox, 'delete.sh', '--tpu=a', '--zone=z', '--yes')
  assert sandbox[1].read_text() == (
      'gcloud [compute] [tpus] [tpu-vm] [delete] [a] [--zone=z] [--quiet]\n')
  assert '+ gcloud compute tpus tpu-vm delete a --zone=z --quiet' in proc.stderr


@pytest.mark.parametrize('args', [
    ['', 'plain', "it's", 'a b', '$HOME', '*', '"q"', 'x\ny', '~', '--k=v w', ';', '&&']])
def test_quote_cmd_round_trips_in_bash_and_sh(args):
  line = subprocess.run(['bash', '-c', f'source {LAUNCH}/common.sh; quote_cmd "$@"', 'q', *args],
                        capture_output=True, text=True, check=True).stdout
  for shell in ('bash', 'sh'):
    out = subprocess.run([shell, '-c', f'for a in {line}; do printf "<%s>" "$a"; done'],
                         capture_output=True, text=True, check=True).stdout
    assert out == ''.join(f'<{a}>' for a in args), shell


# -------------------------------------------------------------------------------- delete / logs
def test_delete(sandbox):
  assert dry(sandbox, 'delete.sh', '--tpu=reid', '--zone=z', '--project=p') == [
      'gcloud compute tpus tpu-vm delete reid --zone=z --project=p']
  assert dry(sandbox, 'delete.sh', '--tpu=reid', '--zone=z', '--mode=queued', '--yes') == [
      'gcloud compute tpus queued-resources delete reid --zone=z --force --quiet']


def test_logs(sandbox):
  assert dry(sandbox, 'logs.sh', '--tpu=reid', '--zone=z', '--worker=3', '--follow') == [
      "gcloud compute tpus tpu-vm ssh reid --zone=z --worker=3 "
      "'--command=cd reid_jax; tail -n 50 -f run.log'"]


# ------------------------------------------------------------------------------------- setup
def test_setup_line_and_remote_script(sandbox):
  (line,) = dry(sandbox, 'setup.sh', '--tpu=reid', '--zone=z', '--repo=https://example.org/r.git',
                '--branch=dev')
  argv = shlex.split(line)
  assert argv[:8] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'reid', '--zone=z',
                      '--worker=all']
  script = remote_script(line)
  parses(script)
  assert 'git clone --branch dev https://example.org/r.git reid_jax' in script
  assert 'uv venv --python 3.12 .venv' in script
  assert "uv pip install --python .venv/bin/python -e '.[tpu]'" in script

  # Run it twice in the sandbox home: clone, then update; the venv is made once.
  env, calls = sandbox
  fake_bin = pathlib.Path(env['PATH'].split(':')[0])
  _write_exe(fake_bin / 'git', RECORDER.format(name='git') +
             'if [ "$1" = clone ]; then mkdir -p "${@: -1}/.git"; fi\n')
  _write_exe(fake_bin / 'uv', RECORDER.format(name='uv') + (
      'if [ "$1" = venv ]; then mkdir -p "$4/bin"; '
      'printf \'#!/bin/sh\\necho fake python "$@"\\n\' > "$4/bin/python"; '
      'chmod +x "$4/bin/python"; fi\n'))
  for _ in range(2):
    proc = subprocess.run(['bash', '-c', script], env=env, cwd=env['HOME'], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
  assert calls.read_text().splitlines() == [
      'git [clone] [--branch] [dev] [https://example.org/r.git] [reid_jax]',
      'uv [venv] [--python] [3.12] [.venv]',
      'uv [pip] [install] [--python] [.venv/bin/python] [-e] [.[tpu]]',
      'git [-C] [reid_jax] [fetch] [origin] [dev]',
      'git [-C] [reid_jax] [checkout] [-B] [dev] [FETCH_HEAD]',
      'uv [pip] [install] [--python] [.venv/bin/python] [-e] [.[tpu]]',
  ]


# -------------------------------------------------------------------------------- stage_data
def test_stage_data(sandbox, tmp_path):
  assert dry(sandbox, 'stage_data.sh', '--tpu=reid', '--zone=z', '--bucket=bk') == [
      "gcloud compute tpus tpu-vm ssh reid --zone=z --worker=all '--command=set -e; "
      'mkdir -p /tmp/tensorflow_datasets; gcloud storage rsync --recursive gs://bk/tfds '
      "/tmp/tensorflow_datasets; du -sh /tmp/tensorflow_datasets'"]
  local = tmp_path / 'my data'
  (line,) = dry(sandbox, 'stage_data.sh', '--tpu=reid', '--zone=z', '--data-gcs=gs://b/t/',
                '--datasets=market1501,cuhk03_np/detected', f'--local-data-dir={local}')
  script = remote_script(line)
  parses(script)
  env, calls = sandbox
  proc = subprocess.run(['bash', '-c', script], env=env, cwd=env['HOME'], capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stderr
  assert calls.read_text().splitlines() == [
      f'gcloud [storage] [rsync] [--recursive] [gs://b/t/market1501] [{local}/market1501]',
      f'gcloud [storage] [rsync] [--recursive] [gs://b/t/cuhk03_np/detected] '
      f'[{local}/cuhk03_np/detected]']
  assert (local / 'cuhk03_np' / 'detected').is_dir()
  proc = launch(sandbox, 'stage_data.sh', '--tpu=a', '--zone=z', '--data-gcs=/local', check_rc=2)
  assert '--data-gcs must be a gs:// path' in proc.stderr


# -------------------------------------------------------------------------------------- run
OVERRIDES = ['--config.optim.lr=0.001', '--config.name=Bo\'s "x" $HOME *']
EXPECTED_JOB = ['-m', 'reid_jax.main', '--config=configs/baseline.py:market1501',
                '--workdir=gs://bk/workdirs/bot',
                '--config.input.data_dir=/tmp/tensorflow_datasets',
                *OVERRIDES, '--mode=eval', '--checkpoint=gs://bk/c d']


def _run_line(sandbox, *args):
  (line,) = dry(sandbox, 'run.sh', '--tpu=reid', '--zone=z',
                '--config=configs/baseline.py:market1501',
                '--workdir=gs://bk/workdirs/bot', OVERRIDES[0], *args, OVERRIDES[1], '--',
                '--mode=eval', '--checkpoint=gs://bk/c d')
  return line


def _fake_checkout(home: pathlib.Path, sleep: float = 0) -> pathlib.Path:
  """~/reid_jax/.venv/bin/python that writes its env flag and argv (one per line) to job.out."""
  out = home / 'job.out'
  _write_exe(home / 'reid_jax' / '.venv' / 'bin' / 'python',
             f'#!/bin/bash\n{{ echo "REID_JAX_DISTRIBUTED=$REID_JAX_DISTRIBUTED"; '
             f'printf "%s\\n" "$@"; }} > {out}.tmp && mv {out}.tmp {out}\n'
             f'echo job output\nexec sleep {sleep}\n')
  return out


def _job_argv(out: pathlib.Path):
  first, *argv = out.read_text().split('\n')[:-1]
  assert first == 'REID_JAX_DISTRIBUTED=1'
  return argv


def test_run_foreground(sandbox):
  line = _run_line(sandbox, '--background=none')
  assert line == (
      "gcloud compute tpus tpu-vm ssh reid --zone=z --worker=all '--command=cd reid_jax; "
      'env REID_JAX_DISTRIBUTED=1 .venv/bin/python -m reid_jax.main '
      '--config=configs/baseline.py:market1501 --workdir=gs://bk/workdirs/bot '
      '--config.input.data_dir=/tmp/tensorflow_datasets --config.optim.lr=0.001 '
      "'\\''--config.name=Bo'\\''\\'\\'''\\''s \"x\" $HOME *'\\'' --mode=eval "
      "'\\''--checkpoint=gs://bk/c d'\\'''")
  script = remote_script(line)
  parses(script)
  env, _ = sandbox
  home = pathlib.Path(env['HOME'])
  out = _fake_checkout(home)
  proc = subprocess.run(['bash', '-c', script], env=env, cwd=home, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  assert 'job output' in proc.stdout
  assert _job_argv(out) == EXPECTED_JOB


def _wait_for(path: pathlib.Path, timeout=10.0):
  deadline = time.time() + timeout
  while not path.exists():
    assert time.time() < deadline, f'{path} did not appear'
    time.sleep(0.05)


def test_run_nohup_detaches_and_refuses_a_second_start(sandbox):
  line = _run_line(sandbox)  # --background=nohup is the default
  script = remote_script(line)
  parses(script)
  assert 'nohup env REID_JAX_DISTRIBUTED=1 .venv/bin/python -m reid_jax.main' in script
  env, _ = sandbox
  home = pathlib.Path(env['HOME'])
  out = _fake_checkout(home, sleep=30)
  t0 = time.time()
  proc = subprocess.run(['bash', '-c', script], env=env, cwd=home, capture_output=True, text=True,
                        timeout=20)
  assert proc.returncode == 0, proc.stderr
  assert time.time() - t0 < 10  # returned while the job runs on
  pid = int((home / 'reid_jax' / 'run.log.pid').read_text())
  try:
    assert 'started on' in proc.stdout and f'{home}/reid_jax/run.log' in proc.stdout
    _wait_for(out)
    assert _job_argv(out) == EXPECTED_JOB
    again = subprocess.run(['bash', '-c', script], env=env, cwd=home, capture_output=True,
                           text=True, timeout=20)
    assert again.returncode == 1
    assert f'already running (pid {pid})' in again.stderr
  finally:
    os.kill(pid, signal.SIGTERM)
  _wait_for(home / 'reid_jax' / 'run.log')
  assert 'job output' in (home / 'reid_jax' / 'run.log').read_text()


@pytest.mark.skipif(not shutil.which('tmux', path='/usr/bin:/bin:/usr/local/bin'),
                    reason='tmux not installed')
def test_run_tmux(sandbox, tmp_path):
  line = _run_line(sandbox, '--background=tmux', '--log-file=my log.txt')
  script = remote_script(line)
  parses(script)
  env, _ = sandbox
  env = dict(env, TMUX_TMPDIR=str(tmp_path))  # a private tmux server
  env['PATH'] = env['PATH'].split(':', 1)[1]  # the real tmux
  env.pop('TMUX', None)
  home = pathlib.Path(env['HOME'])
  out = _fake_checkout(home)
  try:
    proc = subprocess.run(['bash', '-c', script], env=env, cwd=home, capture_output=True,
                          text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert f'{home}/reid_jax/my log.txt' in proc.stdout
    _wait_for(out)
    assert _job_argv(out) == EXPECTED_JOB
  finally:
    subprocess.run(['tmux', 'kill-server'], env=env, capture_output=True)


def test_run_errors(sandbox):
  proc = launch(sandbox, 'run.sh', '--tpu=a', '--zone=z', '--config=c', '--workdir=w',
                '--background=screen', '--dry-run', check_rc=2)
  assert '--background must be one of: nohup tmux none' in proc.stderr
  proc = launch(sandbox, 'run.sh', '--tpu=a', '--zone=z', '--config=c', '--workdir=w',
                '--local-data-dir=data', '--dry-run', check_rc=2)
  assert '--local-data-dir must be an absolute path' in proc.stderr


def test_run_without_data_dir_and_on_one_worker(sandbox):
  (line,) = dry(sandbox, 'run.sh', '--tpu=a', '--zone=z', '--config=c.py', '--workdir=/w',
                '--local-data-dir=', '--worker=0', '--background=none', '--project=p')
  assert line == ("gcloud compute tpus tpu-vm ssh a --zone=z --project=p --worker=0 "
                  "'--command=cd reid_jax; env REID_JAX_DISTRIBUTED=1 .venv/bin/python -m "
                  "reid_jax.main --config=c.py --workdir=/w'")


# --------------------------------------------------------------------------------------- GPU
def test_gpu_single_process(sandbox, tmp_path):
  venv = tmp_path / 'venv'
  assert dry(sandbox, 'gpu_single_node.sh', '--config=configs/baseline.py:market1501',
             '--workdir=workdir/bot', f'--venv={venv}', '--config.seed=1') == [
      f'cd {ROOT}',
      f'python3 -m venv {venv}',
      f"{venv}/bin/pip install -e '.[cuda]'",
      f'{venv}/bin/python -m reid_jax.main --config=configs/baseline.py:market1501 '
      '--workdir=workdir/bot --config.seed=1']
  _write_exe(venv / 'bin' / 'python', '#!/bin/bash\nprintf "[%s]" "$PWD" "$@"\n')
  assert dry(sandbox, 'gpu_single_node.sh', '--config=c', '--workdir=w', f'--venv={venv}',
             '--data-dir=/data') == [
      f'cd {ROOT}', f"{venv}/bin/pip install -e '.[cuda]'",
      f'{venv}/bin/python -m reid_jax.main --config=c --workdir=w --config.input.data_dir=/data']
  # A real run execs the job in the repository root.
  proc = launch(sandbox, 'gpu_single_node.sh', '--config=c', '--workdir=w', f'--venv={venv}',
                '--skip-install', '--', '--mode=eval', '--checkpoint=a b')
  assert proc.stdout == (f'[{ROOT}][-m][reid_jax.main][--config=c][--workdir=w][--mode=eval]'
                         '[--checkpoint=a b]')


def test_gpu_multi_process_lines(sandbox):
  lines = dry(sandbox, 'gpu_single_node.sh', '--config=c', '--workdir=w', '--skip-install',
              '--num-processes=2', '--gpus-per-process=2', '--port=4321', '--log-dir=/tmp/l')
  job = '.venv/bin/python -m reid_jax.main --config=c --workdir=w'
  assert lines == [
      f'cd {ROOT}',
      'mkdir -p /tmp/l',
      f'env CUDA_VISIBLE_DEVICES=0,1 {job} --coordinator_address=localhost:4321 '
      '--num_processes=2 --process_id=0 >/tmp/l/process_0.log 2>&1 &',
      f'env CUDA_VISIBLE_DEVICES=2,3 {job} --coordinator_address=localhost:4321 '
      '--num_processes=2 --process_id=1 >/tmp/l/process_1.log 2>&1 &',
      'wait']
  proc = launch(sandbox, 'gpu_single_node.sh', '--config=c', '--workdir=w',
                '--num-processes=0', check_rc=2)
  assert 'NUM_PROCESSES must be a positive integer' in proc.stderr


def test_gpu_multi_process_run_stops_the_others_when_one_fails(sandbox, tmp_path):
  venv, logs = tmp_path / 'venv', tmp_path / 'logs'
  # Process 1 fails after half a second; process 0 would run for a minute.
  _write_exe(venv / 'bin' / 'python', '#!/bin/bash\necho "gpus=$CUDA_VISIBLE_DEVICES $*"\n'
             'case "$*" in *--process_id=1*) sleep 0.5; exit 3;; esac\nexec sleep 60\n')
  t0 = time.time()
  proc = launch(sandbox, 'gpu_single_node.sh', '--config=c', '--workdir=w', f'--venv={venv}',
                '--skip-install', '--num-processes=2', f'--log-dir={logs}', check_rc=3)
  assert time.time() - t0 < 30
  assert 'a process failed (exit 3)' in proc.stderr
  assert (logs / 'process_0.log').read_text().startswith(
      'gpus=0 -m reid_jax.main --config=c --workdir=w --coordinator_address=localhost:12355 '
      '--num_processes=2 --process_id=0')
  assert (logs / 'process_1.log').read_text().startswith('gpus=1 ')
