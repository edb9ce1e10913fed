"""Shared test set-up: CPU only, fast compiles, one compilation cache for the whole session.

TensorFlow is imported by the tests that use the input pipeline, not here: the library's tests
run without it. CUDA_VISIBLE_DEVICES="" keeps it (and JAX) off any GPU.
"""

import atexit
import gc
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# JAX's persistent compilation cache, shared by this process and every subprocess it starts
# (the same programs with the same flags load instead of compiling again). A new folder per
# session unless MOPOE_TEST_XLA_CACHE names one to keep between sessions: a run starts cold, as
# on a user's machine.
if not os.environ.get("MOPOE_TEST_XLA_CACHE"):
  os.environ["MOPOE_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="mopoe_jax_test_xla_cache.")
  atexit.register(shutil.rmtree, os.environ["MOPOE_TEST_XLA_CACHE"], ignore_errors=True)

# The libraries' own temporary files, in a folder of each pytest-xdist worker (and of every
# process it starts: TMPDIR), removed when the worker ends. tensorflow-datasets leaves an empty
# tmp*tfds folder for every builder made before its data is prepared (it makes one for a GCS
# download that it then skips), TensorFlow's autograph a source file per function it converts:
# ~80 per suite run, never removed. Workers only: where pytest computes its own base folder (a
# run without xdist, xdist's controller) it follows TMPDIR, and would then be deleted with it.
if os.environ.get("PYTEST_XDIST_WORKER") and not os.environ.get("MOPOE_TEST_TMPDIR"):
  os.environ["MOPOE_TEST_TMPDIR"] = os.environ["TMPDIR"] = tempfile.tempdir = tempfile.mkdtemp(
    prefix=f"mopoe_jax_test_tmp.{os.environ['PYTEST_XDIST_WORKER']}."
  )
  atexit.register(shutil.rmtree, os.environ["MOPOE_TEST_TMPDIR"], ignore_errors=True)

import jax  # noqa: E402

from mopoe_jax.platform import runtime  # noqa: E402


def _test_xla_flags() -> str:
  """Tests only, where the jaxlib has the option (jaxlib 0.10; 0.12's XLA:CPU refuses it):
  XLA:CPU's elemental emitters instead of its fusion emitters compile the tests' programs in
  about 40% less time (the tiny train step 18-20 s -> 11-13 s on a 2-core AMD EPYC, jax 0.10.2).
  Results differ from the default's in the last bits; every comparison in the suite is between
  programs compiled with the same flags (main.py subprocesses inherit them: `subprocess_env`)."""
  major, minor = (int(x) for x in jax.__version__.split(".")[:2])  # jax pins its jaxlib's
  return "--xla_cpu_use_fusion_emitters=false" if (major, minor) < (0, 11) else ""


TEST_XLA_FLAGS = _test_xla_flags()
if TEST_XLA_FLAGS and TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
# The XLA flags that main.py sets: the persistent cache's keys include XLA_FLAGS, so main.py
# subprocesses (which inherit them) load what this process compiled, and the reverse.
runtime.apply_defaults()
# Tests are compile-bound on CPU: skip most XLA optimizations, and reuse compiled programs
# across test modules (same program, same cache entry) through the persistent cache.
jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_compilation_cache_dir", os.environ["MOPOE_TEST_XLA_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Python's cyclic garbage collector at main.py's threshold (see there), in every test process
# and every script that imports this file: a pytest worker holds TensorFlow, JAX and the traces
# of dozens of programs, and at the default threshold of 700 it ran ~6,350 collections, 21 of
# them over every object, in test_train.py and test_networks.py; at 10,000, 315 and 2. Those
# two modules in one process: 158.4 and 156.2 CPU-s against 154.8 and 154.1 (alternating runs,
# Python 3.12, a 2-core Intel Xeon with AVX-512).
gc.set_threshold(10_000, 10, 10)

# The slow tier (`-m slow`; the fast one is `-m "not slow"`): a test that trains or evaluates
# end to end through these fixtures is slow, as is one marked so itself (main.py or a benchmark
# in a subprocess, several processes, a full dataset build).
END_TO_END_FIXTURES = frozenset({"straight_run", "evaluated", "two_device_run"})


# The README's test command runs the suite on pytest-xdist workers (`-n auto`: one per core,
# at most `MAX_WORKERS`), each taking a whole module at a time in the order collected (setup.cfg:
# `--dist loadfile --no-loadscope-reorder`). These modules go first, the longest first, so that
# no worker is left alone with a long one at the end; but two that compile the same programs
# are kept apart at the start, or both workers compile them at once (test_fresh_install's run
# loads the three-modality tiny programs that test_train compiles). Seconds of each module on
# two workers, a 2-core AMD EPYC, jax 0.10.2. Other modules follow in pytest's order.
LONGEST_FIRST = (
  "test_train",  # 330
  "test_multihost",  # 175 (test_train's two-device reference run is shared: two_device_run)
  "test_iu_xray",  # 140
  "test_sharded_optimizer",  # 100
  "test_fresh_install",  # 165
  "test_kill",  # 105
  "test_checkpoint_safety",  # 100
  "test_gcs",  # 80
  "test_benchmarks",  # 70
  "test_networks",  # 70
  "test_evaluation",  # 60
  "test_accelerator_cost",  # 35
  "test_layers",  # 35
  "test_inference",  # 35
  "test_lowering",  # 30
  "test_device_count",  # 20
)
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config):
  """`-n auto`: a worker per core, at most `MAX_WORKERS` (each holds JAX and TensorFlow, and the
  end-to-end tests start processes of their own)."""
  del config
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(MAX_WORKERS, cores or 1))  # sched_getaffinity: Linux only (not macOS)


def pytest_collection_modifyitems(items):
  for item in items:
    if END_TO_END_FIXTURES & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.slow)
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # a stable sort


@pytest.fixture(scope="session")
def synthetic_tiny_dir(tmp_path_factory):
  """Builds synthetic_cxr/tiny (32 px, 32 tokens, 384/128/128 studies) once per session."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  import input_pipeline.synthetic_cxr  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  tfds.builder("synthetic_cxr/tiny", data_dir=data_dir).download_and_prepare()
  return data_dir


def prepare_from(builder, manual_dir):
  """``builder.download_and_prepare`` from ``manual_dir`` (a manual-download builder)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
  )
  return builder


def examples_by_study(builder) -> dict:
  """split -> {study_id: numpy example} of a prepared builder."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return {
    split: {ex["study_id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}
    for split in builder.info.splits
  }


def run_prepare_command(family: str, manual_dir, data_dir):
  """``python -m input_pipeline.<family> --config=paper --manual_dir=... --data_dir=...`` as the
  docs give it; returns (its stderr, the prepared builder, loaded in this process)."""
  import importlib  # pylint: disable=g-import-not-at-top

  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  result = subprocess.run(
    [
      sys.executable,
      "-m",
      f"input_pipeline.{family}",
      "--config=paper",
      f"--manual_dir={manual_dir}",
      f"--data_dir={data_dir}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  importlib.import_module(f"input_pipeline.{family}")  # registers the builder here
  return result.stderr, tfds.builder(f"{family}/paper", data_dir=str(data_dir))


def tiny_config(data_dir: str, **train_overrides):
  """configs/tiny.py pointed at ``data_dir`` with train fields overridden."""
  from configs import tiny  # pylint: disable=g-import-not-at-top

  config = tiny.get_config()
  config.data.data_dir = data_dir
  for key, value in train_overrides.items():
    config.train[key] = value
  return config


def small_config(modalities=("frontal", "lateral", "text")):
  """configs/tiny.py at 16 px and 16 tokens: one level less in every network, every kind of
  layer kept (residual blocks included). For tests that build the model from arrays and whose
  property does not depend on its depth; their programs compile in about a third less time."""
  from configs import tiny  # pylint: disable=g-import-not-at-top

  config = tiny.get_config()
  config.data.modalities = tuple(modalities)
  config.data.image_size = config.data.text_length = 16
  config.model.update(
    rec_weights=(1 / len(modalities),) * len(modalities),
    image_encoder_widths=(8, 16, 16),
    image_decoder_widths=(16, 16, 8),
    text_encoder_widths=(16,) * 4,
    text_decoder_widths=(16,) * 4,
    conv_impl="xla",
  )  # XLA's own convolutions: fewer kernels to compile
  return config


_loaded = {}


def load_data(config):
  """The data source of ``config.data`` (`input_pipeline.tfds_source.load`), loaded once per
  session."""
  from input_pipeline import tfds_source  # pylint: disable=g-import-not-at-top

  key = config.data.to_json()
  if key not in _loaded:
    _loaded[key] = tfds_source.load(config.data)
  return _loaded[key]


def train_run(config, workdir: str):
  """`train.train_and_evaluate` as main.py calls it: the data source and a TensorBoard writer."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top

  from mopoe_jax.training import loop as train  # pylint: disable=g-import-not-at-top

  writer = metric_writers.create_default_writer(workdir)
  try:
    return train.train_and_evaluate(config, workdir, load_data(config), writer)
  finally:
    writer.close()


@pytest.fixture(scope="session")
def straight_run(synthetic_tiny_dir, tmp_path_factory):
  """30 steps of the tiny config in one go, checkpoints and evaluations every 10 (keep 2)."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  config = tiny_config(
    synthetic_tiny_dir,
    num_steps=30,
    checkpoint_every_steps=10,
    eval_every_steps=10,
    log_every_steps=5,
  )
  return config, workdir, train_run(config, workdir)


# ------------------------------------------------------------------------------------------------
# Comparing states.


def state_tree(state) -> dict:
  """What a resumed run must reproduce: parameters, BatchNorm statistics, optimizer state, step."""
  return jax.device_get(
    {
      "params": state.params,
      "batch_stats": state.batch_stats,
      "opt_state": state.opt_state,
      "step": state.step,
    }
  )


def assert_trees_equal(a, b, rtol: float = 0.0, atol: float = 0.0) -> None:
  """Same tree structure, and every leaf equal (bit for bit unless a tolerance is given)."""
  assert jax.tree.structure(a) == jax.tree.structure(b), (
    jax.tree.structure(a),
    jax.tree.structure(b),
  )
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape and x.dtype == y.dtype, (
      jax.tree_util.keystr(path),
      x.shape,
      y.shape,
      x.dtype,
      y.dtype,
    )
    if rtol == 0 and atol == 0:
      np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    else:
      np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def jaxpr_equations(jaxpr) -> list:
  """Every equation of a jaxpr, sub-jaxprs (jit, custom_vjp, cond, ...) included."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  eqns = []
  for eqn in jaxpr.eqns:
    eqns.append(eqn)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
          eqns += jaxpr_equations(sub)
  return eqns


# ------------------------------------------------------------------------------------------------
# main.py in a subprocess.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def subprocess_cache_dir():
  """The JAX compilation cache of this process, shared with every main.py subprocess (the
  same programs with the same flags): their recompiles are cache hits."""
  return jax.config.jax_compilation_cache_dir


def gpu_plugin_missing() -> str | None:
  """Why XLA:GPU cannot compile here (a test's skip reason), or None: JAX's CUDA plugin at jax's
  version (the test extra installs it on x86-64 Linux: jax[cuda12-local])."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top

  try:
    version = metadata.version("jax-cuda12-plugin")
  except metadata.PackageNotFoundError:
    return "JAX's CUDA plugin is not installed (pip install 'jax[cuda12-local]')"
  if version != jax.__version__:
    return f"jax-cuda12-plugin {version} does not match jax {jax.__version__}"
  return None


def subprocess_env(**extra) -> dict:
  """The environment of a main.py subprocess: CPU, fast compiles (as in this process)."""
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    JAX_DISABLE_MOST_OPTIMIZATIONS="1",
    TF_CPP_MIN_LOG_LEVEL="2",
    CUDA_VISIBLE_DEVICES="",
  )
  env.update(extra)
  if "XLA_FLAGS" in extra and TEST_XLA_FLAGS not in extra["XLA_FLAGS"]:
    env["XLA_FLAGS"] = f"{extra['XLA_FLAGS']} {TEST_XLA_FLAGS}".strip()
  return env


def main_command(data_dir: str, workdir: str, cache_dir: str, *overrides: str) -> list[str]:
  """``python main.py`` on the tiny config of ``data_dir`` with ``--config.x=y`` overrides."""
  return [
    sys.executable,
    os.path.join(REPO, "main.py"),
    "--config=" + os.path.join(REPO, "configs", "tiny.py"),
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    f"--config.train.compilation_cache_dir={cache_dir}",
    *overrides,
  ]


class RecordingWriter:
  """Stands in for a clu metric writer: keeps the scalars and images written."""

  def __init__(self):
    self.scalars, self.images, self.flushed = {}, {}, False

  def write_scalars(self, step, scalars):
    self.scalars.update(scalars)

  def write_images(self, step, images):
    self.images.update(images)

  def flush(self):
    self.flushed = True


def signal_when(
  command, log_path, condition, sig, *, timeout_s: float, env=None, cwd=None
) -> tuple[subprocess.Popen, bool, str]:
  """Starts ``command`` and sends ``sig`` as soon as ``condition()`` holds (polled every 5 ms).

  Returns the ended process, whether the signal was sent (False: it ended before) and its log.
  """
  with open(log_path, "w") as log:
    proc = subprocess.Popen(
      command, env=env or subprocess_env(), cwd=cwd, stdout=log, stderr=subprocess.STDOUT
    )
  deadline = time.monotonic() + timeout_s
  sent = False
  try:
    while proc.poll() is None:
      if condition():
        proc.send_signal(sig)
        proc.wait(timeout=timeout_s)
        sent = True
        break
      if time.monotonic() > deadline:
        raise TimeoutError(f"{command} did not reach the condition in {timeout_s} s")
      time.sleep(0.005)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  with open(log_path) as log:
    return proc, sent, log.read()


def restored_state_tree(config, workdir: str, step: int) -> dict:
  """`state_tree` of the checkpoint of ``step`` in ``workdir``, restored on this process's first
  device (whatever the number of devices that wrote it)."""
  import functools  # pylint: disable=g-import-not-at-top

  from mopoe_jax.platform import sharding  # pylint: disable=g-import-not-at-top
  from mopoe_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  from mopoe_jax.training import step as step_lib
  from mopoe_jax.vae import model as model_lib

  model = model_lib.create_model(config, len(load_data(config).vocab))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shapes = jax.eval_shape(
    functools.partial(step_lib.init_state, model, config), jax.random.PRNGKey(0)
  )
  abstract = sharding.abstract(shapes, device)
  manager = checkpointing.create_manager(workdir, read_only=True)
  return state_tree(checkpointing.restore_train_state(manager, abstract, step))


# ------------------------------------------------------------------------------------------------
# One process with two devices, fed the global batches of a two-process run.

# The model of the tests that run several devices, processes or a bucket: configs/tiny.py with
# one modality, the report. What they check (equal results on one device, two devices and two
# processes; a run in a bucket killed and resumed) does not depend on the modalities, every
# other test trains the image networks, and each of these processes compiles its own programs:
# a cold main.py start of 2 steps took 31 CPU-s with the report alone, 47 with the frontal view
# and the report (2-core AMD EPYC, jax 0.10.2, the tests' flags).
ONE_MODALITY = {"data.modalities": ("text",), "model.rec_weights": (1.0,)}
# 4 steps, checkpoints, evaluations and logs every 2, no image grids (their program would
# compile in every process; tests/test_train.py checks the grids): the multi-host test's settings.
TWO_DEVICE_TRAIN = {
  "train.checkpoint_every_steps": 2,
  "train.eval_every_steps": 2,
  "train.log_every_steps": 2,
  "train.eval_batches": 1,
  "train.image_grid_studies": 0,
}
TWO_DEVICE_STEPS = 4
TWO_DEVICE_OVERRIDES = tuple(  # a string field's flag takes the bare value, others a literal
  f"--config.{k}={v if isinstance(v, str) else repr(v)}"
  for k, v in {**ONE_MODALITY, **TWO_DEVICE_TRAIN}.items()
)


def loop_initial_state(config, model):
  """The train state a run of ``config`` starts from on this process's devices: the training
  loop's own init program and init key (one compile per config, shared with the loop's runs
  through the persistent cache)."""
  from mopoe_jax.platform import sharding  # pylint: disable=g-import-not-at-top
  from mopoe_jax.training import programs  # pylint: disable=g-import-not-at-top

  init_rng = jax.random.split(jax.random.PRNGKey(config.train.seed))[0]
  return programs.init_program(config, model, sharding.make_data_mesh())(init_rng)


def two_device_config(data_dir: str, **train_overrides):
  """`tiny_config` with `ONE_MODALITY` and the train fields of `TWO_DEVICE_OVERRIDES`."""
  config = tiny_config(
    data_dir, **{k.split(".", 1)[1]: v for k, v in TWO_DEVICE_TRAIN.items()}, **train_overrides
  )
  for key, value in ONE_MODALITY.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


class BackgroundRun:
  """A subprocess that `start()` starts in the background; `workdir()` starts it if it has not
  started yet, waits for it and checks that it succeeded.

  With ``shared`` (a folder that every pytest-xdist worker of the test run sees), the workers
  share one run: the first to start it holds an exclusive lock on ``shared/lock`` until the
  process has ended (and writes ``shared/done`` if it succeeded); another worker's `start()`
  then does nothing, and its `workdir()` waits for the lock and returns the same workdir (or,
  without ``done``, as after a failed run, runs the command itself).
  """

  def __init__(
    self, command, workdir: str, log_path: str, env: dict, timeout_s: float, shared=None
  ):
    self._command, self._env = command, env
    self._workdir, self._log_path, self._timeout_s = workdir, log_path, timeout_s
    self._proc, self._watcher = None, None
    self._lock = open(os.path.join(shared, "lock"), "a") if shared else None  # noqa: SIM115
    self._done = os.path.join(shared, "done") if shared else None

  def _flock(self, *operation: str) -> bool:
    """fcntl.flock on the shared lock (e.g. "LOCK_EX", "LOCK_NB"); False if it would block."""
    import fcntl  # pylint: disable=g-import-not-at-top

    flags = 0
    for name in operation:
      flags |= getattr(fcntl, name)
    try:
      fcntl.flock(self._lock, flags)
    except BlockingIOError:
      return False
    return True

  def _launch(self) -> None:
    with open(self._log_path, "w") as log:
      self._proc = subprocess.Popen(
        self._command, env=self._env, stdout=log, stderr=subprocess.STDOUT
      )
    if self._lock is not None:  # the lock is held; released as soon as the process ends
      self._watcher = threading.Thread(target=self._release_when_ended, daemon=True)
      self._watcher.start()

  def _release_when_ended(self) -> None:
    try:
      code = self._proc.wait(timeout=self._timeout_s)
    except subprocess.TimeoutExpired:
      self.stop()
      code = self._proc.returncode
    if code == 0:
      with open(self._done, "w") as f:
        f.write(self._log_path)
    self._flock("LOCK_UN")

  def start(self) -> None:
    if self._proc is not None:
      return
    if self._lock is None:
      self._launch()
    elif self._flock("LOCK_EX", "LOCK_NB"):  # no other worker runs it now
      if os.path.exists(self._done):  # ... and one has run it
        self._flock("LOCK_UN")
      else:
        self._launch()

  def workdir(self) -> str:
    self.start()
    if self._proc is None:  # another worker ran it or runs it: wait for its end
      self._flock("LOCK_EX")
      if os.path.exists(self._done):
        self._flock("LOCK_UN")
        return self._workdir
      self._launch()
    try:
      code = self._proc.wait(timeout=self._timeout_s)
    finally:
      self.stop()
      if self._watcher is not None:
        self._watcher.join()
    with open(self._log_path) as log:
      assert code == 0, log.read()[-4000:]
    return self._workdir

  def stop(self) -> None:
    if self._proc is not None and self._proc.poll() is None:
      self._proc.kill()
      self._proc.wait()


def xdist_shared_dir(tmp_path_factory, name: str) -> str | None:
  """A folder ``name`` that every pytest-xdist worker of this test run sees (None outside
  xdist): the parent of the workers' base temporary folders is the run's own."""
  if not os.environ.get("PYTEST_XDIST_WORKER"):
    return None
  path = tmp_path_factory.getbasetemp().parent / name
  path.mkdir(exist_ok=True)
  return str(path)


@pytest.fixture(scope="session")
def two_device_run(synthetic_tiny_dir, subprocess_cache_dir, tmp_path_factory):
  """`TWO_DEVICE_STEPS` steps of `two_device_config` in one process with two virtual CPU
  devices, fed the global batches of a two-process run (tests/two_shards.py). Not started
  until a test calls `.start()` (the multi-host test, when a core is free) or `.workdir()`
  (which waits for it). Under pytest-xdist the workers share one run (test_train.py and
  test_multihost.py need it; the synthetic datasets the workers build are the same)."""
  shared = xdist_shared_dir(tmp_path_factory, "two_device_run")
  workdir = pathlib.Path(shared) if shared else tmp_path_factory.mktemp("two_devices")
  run = BackgroundRun(
    [
      sys.executable,
      os.path.join(REPO, "tests", "two_shards.py"),
      "--config=" + os.path.join(REPO, "configs", "tiny.py"),
      f"--workdir={workdir / 'run'}",
      f"--config.data.data_dir={synthetic_tiny_dir}",
      f"--config.train.compilation_cache_dir={subprocess_cache_dir}",
      *TWO_DEVICE_OVERRIDES,
      f"--config.train.num_steps={TWO_DEVICE_STEPS}",
    ],
    str(workdir / "run"),
    str(workdir / "run.log"),
    subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
    timeout_s=600,
    shared=shared,
  )
  yield run
  run.stop()
