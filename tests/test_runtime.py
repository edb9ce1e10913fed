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


_CACHED_COMPILE = """
import sys
sys.path.insert(0, {repo!r})
import jax, jax.numpy as jnp
from mopoe_jax import runtime
events = []
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
runtime.enable_compilation_cache({cache!r})
# The default threshold (1 s) leaves small programs out of the cache; this one is small.
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
def cached_program(x):
  return jnp.tanh(x @ x.T).sum()
f = jax.jit(cached_program)
compiled = runtime.compile_timed(f, jnp.ones((8, 8)), name="test program")
assert float(compiled(jnp.ones((8, 8)))) > 0
print("HITS", events.count("/jax/compilation_cache/cache_hits"))
"""


def test_a_second_process_loads_the_compiled_program_from_the_cache(tmp_path):
  import os, pathlib, subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  repo = str(pathlib.Path(__file__).resolve().parents[1])
  cache = str(tmp_path / "xla_cache")
  script = _CACHED_COMPILE.format(repo=repo, cache=cache)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  hits, entries = [], []
  for _ in range(2):
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hits.append(int(proc.stdout.split("HITS")[-1]))
    entries.append(sorted(f for f in os.listdir(cache) if f.startswith("jit_cached_program")))
  # Compiled and written by the first process; the second loads it and writes nothing new.
  assert hits[0] == 0 and hits[1] >= 1, hits
  assert len(entries[0]) == 1 and entries[1] == entries[0], entries
