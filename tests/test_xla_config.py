"""The XLA flag defaults of the entry points."""

from mopoe_jax import xla_config


def test_defaults_append_and_respect_the_user():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  flags = xla_config.apply_defaults(env)
  assert flags == ("--xla_force_host_platform_device_count=2 "
                   "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution")
  assert xla_config.apply_defaults(env) == flags  # idempotent
  mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_dot"}
  assert xla_config.apply_defaults(mine) == "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
  off = {"MOPOE_XLA_DEFAULTS": "0"}
  assert xla_config.apply_defaults(off) == "" and "XLA_FLAGS" not in off
