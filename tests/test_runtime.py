"""Backend-dependent settings of the entry points (mopoe_jax.runtime)."""

import jax
import pytest

from mopoe_jax import runtime


def test_cpu_flags_append_and_respect_the_user():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
  flags = runtime.apply_defaults(env)
  assert flags == ("--xla_force_host_platform_device_count=2 "
                   "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution")
  assert runtime.apply_defaults(env) == flags  # idempotent
  mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_dot",
          "JAX_PLATFORMS": "cpu"}
  assert runtime.apply_defaults(mine) == "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
  off = {"MOPOE_XLA_DEFAULTS": "0", "JAX_PLATFORMS": "cpu"}
  assert runtime.apply_defaults(off) == "" and "XLA_FLAGS" not in off


@pytest.mark.parametrize("platforms", ["cuda", "tpu", "gpu,cpu"])
def test_cpu_flags_are_left_out_on_accelerators(platforms):
  env = {"JAX_PLATFORMS": platforms, "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
  assert runtime.planned_backend(env) == platforms.split(",")[0]
  assert runtime.apply_defaults(env) == "--xla_dump_to=/tmp/x"
  assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"


def test_planned_backend_finds_accelerator_plugins(monkeypatch):
  monkeypatch.setattr(runtime.importlib.util, "find_spec",
                      lambda name: object() if name == "jax_cuda12_plugin" else None)
  monkeypatch.setattr(runtime.importlib.metadata, "entry_points", lambda group: [])
  assert runtime.planned_backend({}) == "cuda"
  assert runtime.apply_defaults({}) == ""
  monkeypatch.setattr(runtime.importlib.util, "find_spec", lambda name: None)
  assert runtime.planned_backend({}) == "cpu"


def test_fast_compile_options_only_on_cpu(monkeypatch):
  seen = []

  class Lowered:
    def compile(self, compiler_options=None):
      seen.append(compiler_options)

  class Jitted:
    def lower(self, *args):
      return Lowered()

  runtime.compile_fast(Jitted())
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  runtime.compile_fast(Jitted())
  assert seen == [runtime.FAST_COMPILE_OPTIONS, None]
