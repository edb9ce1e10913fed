"""The JAX side of benchmarks/step_throughput.py, in a process of its own.

Started by the parent as ``step_throughput.py --worker jax``; see that file for the protocol.
It needs only the model and train step of ``mopoe_jax`` and the configs (ml_collections): it
imports neither PyTorch nor TensorFlow, and says so in its replies (``foreign_modules``).
"""

from __future__ import annotations

import faulthandler
import functools
import os
import sys
import time

from benchmarks import _common

FOREIGN = ("torch", "tensorflow")


class JaxWorker:
  """Builds, compiles and steps ``mopoe_jax.training.step.train_step``, one batch size after
  another.

  A worker serves one variant (compute dtype, conv_impl) of one size. The jitted
  ``step.init_state`` is kept across batch sizes: its compilation (tens of seconds at the
  paper's size on 2 cores) is paid once, and every batch starts from the same initial state.
  """

  def __init__(self, args, jax):
    from mopoe_jax.platform import compilation  # pylint: disable=g-import-not-at-top
    from mopoe_jax.training import step
    from mopoe_jax.vae import model as model_lib  # pylint: disable=g-import-not-at-top

    self.args, self.jax = args, jax
    self.model_lib, self.compilation, self.step_lib = model_lib, compilation, step
    self.backend = jax.default_backend()
    self.setup = None  # (key, config, model, step_config, jitted init)
    self.state = self.compiled = self.batch = None
    self.losses = []
    self.sampler = None

  # -- commands ------------------------------------------------------------------------------

  def build(
    self,
    size: str,
    batch: int,
    vocab: int,
    compute_dtype: str,
    conv_impl: str | None,
    warmup: int,
    warmup_seconds: float,
    seed: int = 0,
  ) -> dict:
    """Initial state, lower, compile, then ``warmup`` untimed steps (fewer once they have
    taken ``warmup_seconds``)."""
    jax, step_lib = self.jax, self.step_lib
    _common.maybe_simulate_crash("build", self.args.simulate_crash)
    self._release()
    self.sampler = _common.RssPeak().__enter__()
    key = (size, vocab, compute_dtype, conv_impl)
    init_compiled = self.setup is None or self.setup[0] != key
    if init_compiled:
      config = _common.get_config(size)
      config.model.compute_dtype = compute_dtype
      if conv_impl and "conv_impl" in config.model:
        config.model.conv_impl = conv_impl
      model = self.model_lib.create_model(config, vocab)
      step_config = step_lib.StepConfig.from_config(config, model, pad_id=_common.PAD_ID)
      # As the training loop does: the init program runs once, compiled fast on CPU.
      init = self.compilation.compile_fast(
        jax.jit(functools.partial(step_lib.init_state, model, config)),
        jax.random.PRNGKey(0),
        runs_once=True,
      )
      self.setup = (key, config, model, step_config, init)
    _, config, model, step_config, init = self.setup
    d = config.data
    data = _common.make_data(d.image_size, d.text_length, batch, vocab, seed)
    phases = {}
    t = time.perf_counter()
    self.state = init(jax.random.PRNGKey(0))
    jax.block_until_ready(self.state)
    phases["init_s"] = time.perf_counter() - t
    num_params = int(sum(x.size for x in jax.tree.leaves(self.state.params)))
    self.batch = jax.device_put(data)
    self.key = jax.random.PRNGKey(1)
    step = jax.jit(
      functools.partial(step_lib.train_step, model=model, step_config=step_config),
      donate_argnums=(0,),
    )
    t = time.perf_counter()
    lowered = step.lower(self.state, self.batch, self.key)
    phases["lower_s"] = time.perf_counter() - t
    t = time.perf_counter()
    self.compiled = lowered.compile()
    phases["compile_s"] = time.perf_counter() - t
    warm = []
    while len(warm) < warmup and (not warm or sum(warm) < warmup_seconds):
      t = time.perf_counter()
      self._step()
      warm.append(time.perf_counter() - t)
    if warm:
      phases["first_step_s"] = warm[0]
    has_conv_impl = "conv_impl" in config.model
    return {
      "params": num_params,
      "phases": phases,
      "init_compiled": init_compiled,
      "warmup_step_s": warm,
      "xla_flops_per_step": _common.flops_from_cost_analysis(self.compiled),
      "learning_rate": _common.first_learning_rate(config),
      "compute_dtype": compute_dtype,
      "conv_impl": config.model.conv_impl if has_conv_impl else None,
      "load": _common.load(),
    }

  def peak(self, budget_s: float) -> dict:
    jax, jnp = self.jax, self.jax.numpy
    gpu = self.backend != "cpu"
    out = {}
    for name, dtype in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
      matmul = jax.jit(lambda x: x @ x)

      def make(n, dtype=dtype, matmul=matmul):
        a = jnp.ones((n, n), dtype)
        return lambda: matmul(a).block_until_ready()

      out[name] = _common.bounded_matmul_peak(
        make,
        n_start=4096 if gpu else 256,
        n_max=16384 if gpu else 4096,
        budget_s=budget_s,
        max_reps=50 if gpu else 10,
      )
    out["load"] = _common.load()
    return out

  def steps(self, n: int) -> dict:
    _common.maybe_simulate_crash("steps", self.args.simulate_crash)
    load_before = _common.load()
    wall, cpu = [], []
    with _common.RssPeak() as mem:
      for _ in range(n):
        t, c = time.perf_counter(), time.process_time()
        self._step()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {
      "wall": wall,
      "cpu": cpu,
      "load_before": load_before,
      "load_after": _common.load(),
      "rss_peak_bytes": mem.peak,
    }

  def report(self) -> dict:
    """The batch's end: finite losses, memory (RSS sampled since the build began)."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    finite = bool(np.all(np.isfinite(self.losses))) and int(self.state.bad_step) < 0
    self.sampler.__exit__(None, None, None)
    sampled, self.sampler = self.sampler.peak, None
    memory = {
      "build_and_steps_peak_rss_bytes": sampled,
      "process_peak_rss_bytes": _common.max_rss_bytes(),
    }
    stats = self.jax.devices()[0].memory_stats()
    if stats:  # the process's peak so far: the parent runs the batches in ascending order
      memory["device_peak_bytes"] = stats.get("peak_bytes_in_use")
    return {
      "losses_finite": finite,
      "last_loss": self.losses[-1] if self.losses else None,
      "memory": memory,
      "foreign_modules": _foreign_modules(),
    }

  def finish(self) -> dict:
    return {"foreign_modules": _foreign_modules()}

  # -- helpers -------------------------------------------------------------------------------

  def _step(self):
    self.state, metrics = self.compiled(self.state, self.batch, self.key)
    self.losses.append(float(metrics["loss"]))  # waits for the step

  def _release(self):
    """Drops the previous batch's state, program and data before the next build."""
    import gc  # pylint: disable=g-import-not-at-top

    self.state = self.compiled = self.batch = None
    self.losses = []
    if self.sampler is not None:
      self.sampler.__exit__(None, None, None)
      self.sampler = None
    gc.collect()


def _foreign_modules() -> list[str]:
  return [m for m in FOREIGN if m in sys.modules]


def main(args) -> int:
  _common.die_with_parent()
  channel = _common.WorkerChannel()
  faulthandler.enable()
  _common.maybe_simulate_crash("startup", args.simulate_crash)
  t0 = time.perf_counter()
  cores = _common.setup_jax_env(
    args.pin_threads, args.xla_flags, not args.no_xla_defaults, cpu_only=args.device == "cpu"
  )
  if args.device == "gpu":
    os.environ["JAX_PLATFORMS"] = "cuda"
  # Several processes share one GPU: take memory as needed, so that each can measure its peak.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax  # pylint: disable=g-import-not-at-top

  worker = JaxWorker(args, jax)
  import flax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  device = jax.devices()[0]
  channel.send(
    event="hello",
    ok=True,
    framework="jax",
    pid=os.getpid(),
    import_s=time.perf_counter() - t0,
    backend=worker.backend,
    device_kind=device.device_kind,
    device_count=jax.device_count(),
    versions={
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "flax": flax.__version__,
      "optax": optax.__version__,
      "python": sys.version.split()[0],
    },
    xla_flags=os.environ.get("XLA_FLAGS", ""),
    cores=cores,
    disable_most_optimizations=bool(jax.config.read("jax_disable_most_optimizations")),
    foreign_modules=_foreign_modules(),
  )
  return _common.serve(
    channel,
    {
      "build": worker.build,
      "peak": worker.peak,
      "steps": worker.steps,
      "report": worker.report,
      "finish": worker.finish,
    },
  )
