"""Backend-dependent settings of the entry points (mopoe_jax.platform.runtime)."""

import functools

import jax
import pytest

from mopoe_jax.platform import compilation, runtime


def test_cpu_flags_append_and_respect_the_user():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
  flags = runtime.apply_defaults(env)
  assert flags == (
    "--xla_force_host_platform_device_count=2 "
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
  )
  assert runtime.apply_defaults(env) == flags  # idempotent
  mine = {
    "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_dot",
    "JAX_PLATFORMS": "cpu",
  }
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
  monkeypatch.setattr(
    runtime.importlib.util,
    "find_spec",
    lambda name: object() if name == "jax_cuda12_plugin" else None,
  )
  monkeypatch.setattr(runtime.importlib.metadata, "entry_points", lambda group: [])
  monkeypatch.setattr(runtime, "nvidia_driver_present", lambda: True)
  assert runtime.planned_backend({}) == "cuda"
  env = {}
  assert runtime.apply_defaults(env) == "" and "JAX_PLATFORMS" not in env
  # The plugin without NVIDIA's driver (the test extra's, for compiling only): the CPU, its
  # flags, and JAX told so (otherwise it logs the plugin's failure as an error).
  monkeypatch.setattr(runtime, "nvidia_driver_present", lambda: False)
  assert runtime.planned_backend({}) == "cpu"
  env = {}
  assert runtime.apply_defaults(env) == " ".join(runtime.CPU_FLAGS)
  assert env["JAX_PLATFORMS"] == "cpu"
  monkeypatch.setattr(runtime.importlib.util, "find_spec", lambda name: None)
  assert runtime.planned_backend({}) == "cpu"


def test_fast_compile_options_on_cpu_and_the_init_follows_disable_most_optimizations(monkeypatch):
  seen = []

  class Lowered:
    def compile(self, compiler_options=None):
      seen.append(compiler_options)

  class Jitted:
    def lower(self, *args):
      return Lowered()

  assert jax.config.read("jax_disable_most_optimizations")  # conftest.py's setting
  compilation.compile_fast(Jitted())
  compilation.compile_fast(Jitted(), runs_once=True)  # the flag's own options (level 0)
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    compilation.compile_fast(Jitted(), runs_once=True)
  finally:
    jax.config.update("jax_disable_most_optimizations", True)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  compilation.compile_fast(Jitted())
  compilation.compile_fast(Jitted(), runs_once=True)
  fast = compilation.FAST_COMPILE_OPTIONS
  assert seen == [fast, None, fast, None, None]


_CACHED_COMPILE = """
import sys
sys.path.insert(0, {repo!r})
import jax, jax.numpy as jnp
from mopoe_jax.platform import compilation, runtime
events = []
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
runtime.enable_compilation_cache({cache!r})
# The default threshold (1 s) leaves small programs out of the cache; this one is small.
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
def cached_program(x):
  return jnp.tanh(x @ x.T).sum()
f = jax.jit(cached_program)
compiled = compilation.compile_timed(f, jnp.ones((8, 8)), name="test program")
assert float(compiled(jnp.ones((8, 8)))) > 0
print("HITS", events.count("/jax/compilation_cache/cache_hits"))
"""


def _run_twice(template: str, tmp_path, entry_names) -> tuple[list[int], list[list[str]]]:
  """Runs the script ``template`` (formatted with the repo and a cache folder under
  ``tmp_path``) in two processes one after the other: (each one's cache hits, the cache's
  entries after each, as ``entry_names(file names)`` lists them)."""
  import os
  import pathlib
  import subprocess
  import sys  # pylint: disable=g-import-not-at-top,multiple-imports

  repo = str(pathlib.Path(__file__).resolve().parents[1])
  cache = str(tmp_path / "xla_cache")
  script = template.format(repo=repo, cache=cache)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  hits, entries = [], []
  for _ in range(2):
    proc = subprocess.run(
      [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    hits.append(int(proc.stdout.split("HITS")[-1]))
    entries.append(entry_names(os.listdir(cache)))
  return hits, entries


def test_a_second_process_loads_the_compiled_program_from_the_cache(tmp_path):
  hits, entries = _run_twice(
    _CACHED_COMPILE,
    tmp_path,
    lambda names: sorted(f for f in names if f.startswith("jit_cached_program")),
  )
  # Compiled and written by the first process; the second loads it and writes nothing new.
  assert hits[0] == 0 and hits[1] >= 1, hits
  assert len(entries[0]) == 1 and entries[1] == entries[0], entries


_OTHER_PROCESS_COMPILE = """
import sys
sys.path.insert(0, {repo!r})
import jax, jax.numpy as jnp
from jax._src import distributed
from mopoe_jax.platform import runtime
jax.config.update("jax_compilation_cache_dir", {cache!r})
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
# Process 1 of a CPU run of several processes, as far as JAX's cache writer can tell (it reads
# nothing else); no jax.distributed needed.
distributed.global_state.process_id = 1
hits = []
jax.monitoring.register_event_listener(
  lambda event, **kw: hits.append(event) if event.endswith("/cache_hits") else None
)
def before_the_hook(x):
  return jnp.sin(x).sum()
jax.jit(before_the_hook)(jnp.ones(3))
assert runtime.store_compiles_on_every_process()
assert runtime.store_compiles_on_every_process()  # a second call changes nothing
def after_the_hook(x):
  return jnp.cos(x).sum()
assert float(jax.jit(after_the_hook)(jnp.zeros(3))) == 3.0
print("HITS", len(hits))
"""


def test_a_process_other_than_0_stores_its_cpu_compiles_in_the_cache(tmp_path):
  """JAX stores compiled programs from process 0 only; on CPU no other process can load them
  (its keys name its own devices). With `runtime.store_compiles_on_every_process`, process 1
  stores its own, and its next start loads them; without it (before the call) it stores
  nothing, as JAX does. Fails when a JAX version changes the writer that the hook extends."""
  hits, entries = _run_twice(
    _OTHER_PROCESS_COMPILE,
    tmp_path,
    lambda names: sorted(f.split("-")[0] for f in names if f.endswith("-cache")),
  )
  assert entries == [["jit_after_the_hook"]] * 2, entries
  assert hits == [0, 1], hits  # the restart loads what it stored, and only that


# ------------------------------------------------------------------------------------------------
# Traced programs kept on disk (compilation.StoredProgram).

_traces = []


def _program(xs, batch):
  _traces.append(1)  # runs when (and only when) the function is traced
  h = jax.numpy.tanh(xs[0] @ batch["w"]) + xs[1]
  return [h, xs[1] * 2.0], {"loss": (h**2).sum()}


def _args(n=4):
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  return (
    [rng.normal(size=(n, n)).astype(np.float32), rng.normal(size=(n,)).astype(np.float32)],
    {"w": rng.normal(size=(n, n)).astype(np.float32)},
  )


def _stored(directory, key="k"):
  # A fresh function object each time, as in a new process (JAX keeps traces per function).
  return compilation.StoredProgram(
    functools.partial(_program), name="prog", key=key, directory=directory, donate_argnums=()
  )


def test_stored_program_is_traced_once_then_loaded_and_computes_the_same(tmp_path, caplog):
  import numpy as np  # pylint: disable=g-import-not-at-top

  plain = jax.jit(functools.partial(_program))(*_args())  # the program as jax.jit runs it
  _traces.clear()
  first = _stored(str(tmp_path))
  lowered = first.lower(*_args())
  assert "module @jit_prog" in lowered.as_text()  # named as the program in logs and caches
  out1 = lowered.compile()(*_args())
  assert len(_traces) == 1 and not first.loaded
  assert sorted(p.name for p in tmp_path.iterdir()) == ["prog-k.jaxexport"]

  second = _stored(str(tmp_path))  # a restart: same key, fresh object
  out2 = second(*_args())
  assert len(_traces) == 1 and second.loaded  # loaded, not traced
  for a, b, c in zip(jax.tree.leaves(out1), jax.tree.leaves(out2), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
  assert jax.tree.structure(out1) == jax.tree.structure(out2)

  # Other shapes under the same key: traced again (with a warning), and stored for those.
  caplog.set_level("WARNING")
  third = _stored(str(tmp_path))
  third(*_args(8))
  assert len(_traces) == 2 and not third.loaded
  assert "Cannot use the stored prog" in caplog.text and "other shapes" in caplog.text

  # A damaged file: traced again and replaced by a good one.
  (tmp_path / "prog-k.jaxexport").write_bytes(b"not a program")
  fourth = _stored(str(tmp_path))
  fourth(*_args())
  assert len(_traces) == 3 and not fourth.loaded
  fifth = _stored(str(tmp_path))
  fifth(*_args())
  assert len(_traces) == 3 and fifth.loaded
  assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_stored_program_without_a_directory_writes_nothing(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  _traces.clear()
  program = _stored(None)
  program(*_args())
  program(*_args())
  assert len(_traces) == 1 and not program.loaded and not list(tmp_path.iterdir())


def test_program_key_follows_what_the_trace_depends_on(monkeypatch):
  def f(x):
    return x

  def g(x):
    return x

  base = compilation.program_key("p", (1, 2), f)
  assert compilation.program_key("p", (1, 2), f) == base
  assert compilation.program_key("p", (1, 3), f) != base
  assert compilation.program_key("p", (1, 2), g) != base  # another function name

  # Object addresses are left out: the same function defined again (another process) matches.
  def f(x):  # noqa: F811  pylint: disable=function-redefined
    return x

  assert compilation.program_key("p", (1, 2), f) == base
  # A setting that changes the trace changes the key; one that only changes caching does not.
  with jax.default_matmul_precision("highest"):
    assert compilation.program_key("p", (1, 2), f) != base
  before = jax.config.jax_persistent_cache_min_compile_time_secs
  try:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before + 7)
    assert compilation.program_key("p", (1, 2), f) == base
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before)
  # This package's source is part of the key: an edit anywhere in mopoe_jax changes it.
  assert len(compilation.source_digest()) == 64
  monkeypatch.setattr(compilation, "source_digest", lambda: "0" * 64)
  assert compilation.program_key("p", (1, 2), f) != base


def test_stored_programs_dir_follows_the_compilation_cache():
  before = jax.config.jax_compilation_cache_dir
  try:
    jax.config.update("jax_compilation_cache_dir", "/some/cache")
    assert compilation.stored_programs_dir() == "/some/cache/lowered"
    assert compilation.stored_programs_dir(enabled=False) is None
    jax.config.update("jax_compilation_cache_dir", None)
    assert compilation.stored_programs_dir() is None
  finally:
    jax.config.update("jax_compilation_cache_dir", before)


def test_storing_a_program_keeps_the_newest_few_of_its_name(tmp_path):
  import os  # pylint: disable=g-import-not-at-top

  for i in range(compilation.STORED_PROGRAMS_KEEP + 3):  # older programs of the same name
    path = tmp_path / f"prog-old{i}.jaxexport"
    path.write_bytes(b"x")
    os.utime(path, (1000 + i, 1000 + i))
  (tmp_path / "other-old.jaxexport").write_bytes(b"x")  # another program: left alone
  _stored(str(tmp_path), key="new")(*_args())
  kept = sorted(p.name for p in tmp_path.iterdir())
  newest_old = [f"prog-old{i}.jaxexport" for i in range(4, compilation.STORED_PROGRAMS_KEEP + 3)]
  assert kept == sorted(["other-old.jaxexport", "prog-new.jaxexport", *newest_old]), kept


_SLURM_TWO_TASKS = {
  "SLURM_JOB_ID": "77",
  "SLURM_STEP_NODELIST": "node[001-002]",
  "SLURM_NTASKS": "2",
  "SLURM_PROCID": "1",
  "SLURM_LOCALID": "0",
  "JAX_PLATFORMS": "cpu",
}


@pytest.mark.parametrize(
  "environ, expected",
  [
    ({"JAX_PLATFORMS": "cpu"}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "JAX_COORDINATOR_ADDRESS=10.0.0.1:1234"),
    (_SLURM_TWO_TASKS, "SLURM job 77: task 1 of 2 on node[001-002]"),
    (dict(_SLURM_TWO_TASKS, SLURM_NTASKS="1"), None),  # a one-task job (sbatch alone)
    ({k: v for k, v in _SLURM_TWO_TASKS.items() if k != "SLURM_STEP_NODELIST"}, None),
    (
      {
        "OMPI_MCA_orte_hnp_uri": "1234.0;tcp://10.0.0.1:5555",
        "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_RANK": "3",
      },
      "Open MPI: rank 3 of 4",
    ),
    ({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "1"}, None),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, "Cloud TPU: 4 host(s) per slice, 1 slice(s)"),
    ({"TPU_WORKER_HOSTNAMES": "t0"}, None),
    # What libtpu leaves there on a machine without TPUs.
    (
      {
        "TPU_WORKER_HOSTNAMES": "WARNING: could not determine TPU worker hostnames or IP "
        "addresses, please set env var `TPU_WORKER_HOSTNAMES` manually"
      },
      None,
    ),
  ],
)
def test_several_processes_are_detected_from_the_environment(environ, expected):
  assert runtime.detect_processes(environ, tpu_chips_present=lambda: False) == expected


def test_a_cloud_tpu_vm_leaves_the_hosts_to_jax_and_a_cpu_with_libtpu_does_not():
  tpu = {"JAX_PLATFORMS": "tpu"}
  assert "Cloud TPU VM" in runtime.detect_processes(tpu, tpu_chips_present=lambda: True)
  # libtpu installed on a machine without TPU chips (e.g. to compile for a topology): one process.
  assert runtime.detect_processes(tpu, tpu_chips_present=lambda: False) is None


def test_start_processes_follows_the_setting_the_fields_and_the_environment(monkeypatch):
  import ml_collections  # pylint: disable=g-import-not-at-top

  started = []
  monkeypatch.setattr(runtime, "initialize_distributed", started.append)

  def train(**fields):
    return ml_collections.ConfigDict(
      dict(
        dict(multihost="auto", coordinator_address=None, num_processes=None, process_id=None),
        **fields,
      )
    )

  assert not runtime.start_processes(train(), {"JAX_PLATFORMS": "cpu"})
  assert runtime.start_processes(train(), _SLURM_TWO_TASKS)
  assert not runtime.start_processes(train(multihost="false"), _SLURM_TWO_TASKS)
  assert runtime.start_processes(train(multihost="true"), {"JAX_PLATFORMS": "cpu"})
  assert runtime.start_processes(train(num_processes=2, process_id=0), {"JAX_PLATFORMS": "cpu"})
  assert len(started) == 3
  with pytest.raises(ValueError, match="must be 'auto', true or false, got 'sometimes'"):
    runtime.start_processes(train(multihost="sometimes"), {})
  assert [runtime.multihost_setting(v) for v in (True, False, "True", "auto")] == [
    "on",
    "off",
    "on",
    "auto",
  ]


def test_the_stored_programs_key_ignores_the_devices_each_process_sees():
  """jax.distributed sets jax_cuda_visible_devices (and the like) to each process's own local
  device: the processes' keys must still agree, or none loads the others' traced step."""
  before = compilation.program_key("p", 1)
  previous = jax.config.values["jax_cuda_visible_devices"]
  jax.config.update("jax_cuda_visible_devices", "1")
  try:
    assert compilation.program_key("p", 1) == before
  finally:
    jax.config.update("jax_cuda_visible_devices", previous)
  assert compilation.program_key("p", 2) != before
