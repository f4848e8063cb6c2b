"""Test session set-up: 8 simulated CPU devices (before jax is imported) and parsed absl flags
(grain reads flags; outside absl.app they are otherwise unparsed)."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()
