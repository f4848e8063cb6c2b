"""``python -m reid_jax.main --config=configs/<method>.py[:ARG] --workdir=DIR [--mode=train|eval]``.

Thin entry point (flax-examples style): flags, multi-host initialisation, then
``reid_jax.train.train_and_evaluate`` or, with ``--mode=eval --checkpoint=DIR``, evaluation of a
checkpoint (e.g. one written by ``reid_jax.convert``).
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from reid_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:ARG]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and metrics go.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'Train (and evaluate), or only '
                          'evaluate --checkpoint.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Checkpoint directory for --mode=eval.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', os.environ.get('REID_JAX_COORDINATOR'),
    'host:port of process 0, for multi-process runs without auto-detection (GPU, CPU). Cloud '
    'TPU VMs need none of these flags: set REID_JAX_DISTRIBUTED=1 instead.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process\'s index (0-based).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import jax
  if _COORDINATOR.value:
    if jax.config.jax_platforms in ('cpu',) or os.environ.get('JAX_PLATFORMS') == 'cpu':
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif os.environ.get('REID_JAX_DISTRIBUTED'):
    jax.distributed.initialize()  # Cloud TPU: topology from the TPU metadata

  from reid_jax import train
  logging.info('JAX process %d/%d, %d local / %d global devices (%s)', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  config = _CONFIG.value
  if _MODE.value == 'eval':
    if not _CHECKPOINT.value:
      raise cli.UserError('--mode=eval needs --checkpoint=DIR')
    results = train.evaluate_checkpoint(config, _CHECKPOINT.value, _WORKDIR.value)
  else:
    results = train.train_and_evaluate(config, _WORKDIR.value)
  print(' '.join(f'{k}={v:.2f}' if isinstance(v, float) else f'{k}={v}'
                 for k, v in results.items()))


if __name__ == '__main__':
  cli.run(main)
