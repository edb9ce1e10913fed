"""The PyTorch side of benchmarks/step_throughput.py, in a process of its own.

Started by the parent as ``step_throughput.py --worker torch``; see that file for the protocol.
Steps ``benchmarks/torch_mopoe.py``'s model (forward, loss, backward, Adam) on the shapes of a
config of ``configs/`` (ml_collections); imports neither JAX nor TensorFlow, and says so in its
replies (``foreign_modules``).

Modes: ``f32`` = plain float32, NCHW; ``amp`` = channels_last memory format and
``torch.autocast`` bf16 (the usual fast setting on a GPU). On CUDA both set
``torch.backends.cudnn.benchmark = True``.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import time

from benchmarks import _common

FOREIGN = ("jax", "tensorflow")
MODES = ("f32", "amp")
FLOP_COUNT_ROWS = 8  # the FLOP counter runs on this many rows, scaled to the batch


def torch_config(config, vocab: int, learning_rate: float):
  """torch_mopoe's config with the sizes and loss settings of an ml_collections config."""
  from benchmarks import torch_mopoe as tm  # pylint: disable=g-import-not-at-top

  d, m = config.data, config.model
  return tm.TorchModelConfig(
    latent_dim=m.latent_dim,
    vocab_size=vocab,
    image_size=d.image_size,
    text_length=d.text_length,
    text_embed_dim=m.text_encoder_widths[0],
    image_encoder_widths=tuple(m.image_encoder_widths),
    image_decoder_widths=tuple(m.image_decoder_widths),
    text_encoder_widths=tuple(m.text_encoder_widths),
    text_decoder_widths=tuple(m.text_decoder_widths),
    dropout=m.dropout,
    variant=m.variant,
    prior_expert=m.prior_expert,
    mixture=m.assignment,
    image_scale=m.image_scale,
    rec_weights=tuple(m.rec_weights),
    beta=m.beta,
    mask_text_padding=m.mask_text_padding,
    learning_rate=learning_rate,
    adam_betas=(config.train.b1, config.train.b2),
  )


class TorchWorker:
  """Builds the PyTorch baseline for one mode and steps it on the benchmark's data."""

  def __init__(self, args, torch):
    self.args, self.torch = args, torch
    self.losses = []
    self.cuda = False
    self.model = self.batch = self._train_step = self.sampler = None

  # -- commands ------------------------------------------------------------------------------

  def build(
    self,
    size: str,
    batch: int,
    vocab: int,
    device: str,
    mode: str,
    warmup: int,
    warmup_seconds: float,
    threads: int | None = None,
    seed: int = 0,
  ) -> dict:
    """A fresh model and Adam, then ``warmup`` untimed steps (fewer once they have taken
    ``warmup_seconds``) and the FLOP count."""
    torch = self.torch
    from benchmarks import torch_mopoe as tm  # pylint: disable=g-import-not-at-top

    _common.maybe_simulate_crash("build", self.args.simulate_crash)
    self._release()
    self.sampler = _common.RssPeak().__enter__()
    if mode not in MODES:
      raise ValueError(f"torch mode {mode!r}: choose from {MODES}.")
    self.device = torch.device(device)
    self.cuda = self.device.type == "cuda"
    if threads:
      torch.set_num_threads(threads)
    if self.cuda:
      torch.backends.cudnn.benchmark = True
    else:
      torch.set_flush_denormal(True)  # as XLA:CPU does
    config = _common.get_config(size)
    lr = _common.first_learning_rate(config)
    cfg = torch_config(config, vocab, lr)
    d = config.data
    data = _common.make_data(d.image_size, d.text_length, batch, vocab, seed)
    phases = {}
    t = time.perf_counter()
    torch.manual_seed(0)
    self.model = tm.TorchMoPoE(cfg).to(self.device)
    channels_last = mode == "amp"
    if channels_last:
      self.model = self.model.to(memory_format=torch.channels_last)
    num_params = int(sum(p.numel() for p in self.model.parameters()))
    self._train_step = tm.make_train_step(
      self.model,
      tm.make_optimizer(self.model, cfg),
      autocast_dtype=torch.bfloat16 if mode == "amp" else None,
    )
    images = {
      m: torch.from_numpy(data[m]).permute(0, 3, 1, 2).float().div(255.0)
      for m in ("frontal", "lateral")
    }
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    self.batch = {m: x.to(self.device).contiguous(memory_format=fmt) for m, x in images.items()}
    self.batch["text"] = torch.from_numpy(data["text"]).long().to(self.device)
    self._sync()
    phases["build_s"] = time.perf_counter() - t
    warm = []
    while len(warm) < warmup and (not warm or sum(warm) < warmup_seconds):
      t = time.perf_counter()
      self._step()
      warm.append(time.perf_counter() - t)
    if warm:
      phases["first_step_s"] = warm[0]
    if len(warm) > 1:
      phases["next_warmup_steps_s"] = sum(warm[1:])
    t = time.perf_counter()
    rows = min(batch, FLOP_COUNT_ROWS)
    flops = self._model_flops(rows) * batch / rows
    phases["flop_count_s"] = time.perf_counter() - t
    return {
      "params": num_params,
      "phases": phases,
      "warmup_step_s": warm,
      "model_flops_per_step": flops,
      "flops_counted_on_rows": rows,
      "learning_rate": lr,
      "mode": mode,
      "device": str(self.device),
      "threads": torch.get_num_threads(),
      "settings": self._settings(channels_last, mode),
      "load": _common.load(),
    }

  def peak(self, budget_s: float) -> dict:
    torch = self.torch
    out = {}
    for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
      if name == "bf16" and not self.cuda and not _common.cpu_info()["native_bf16"]:
        out[name] = {
          "skipped": "no native bf16 on this CPU (no avx512_bf16 or amx_bf16 in "
          "/proc/cpuinfo); torch's emulated bf16 matmul is slow (a "
          "2048^3 peak measurement took ~13 min in issue #14)"
        }
        continue

      def make(n, dtype=dtype):
        a = torch.ones((n, n), dtype=dtype, device=self.device)

        def run():
          a @ a
          self._sync()

        return run

      out[name] = _common.bounded_matmul_peak(
        make,
        n_start=4096 if self.cuda else 256,
        n_max=16384 if self.cuda else 4096,
        budget_s=budget_s,
        max_reps=50 if self.cuda else 10,
      )
    out["load"] = _common.load()
    return out

  def steps(self, n: int) -> dict:
    _common.maybe_simulate_crash("steps", self.args.simulate_crash)
    load_before = _common.load()
    wall, cpu = [], []
    with _common.RssPeak() as mem:
      for _ in range(n):
        self._sync()
        t, c = time.perf_counter(), time.process_time()
        self._step()
        self._sync()
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
    """The batch's end: finite losses, memory (RSS sampled since the build began; the CUDA
    allocator's peak since the build)."""
    import math  # pylint: disable=g-import-not-at-top

    self.sampler.__exit__(None, None, None)
    sampled, self.sampler = self.sampler.peak, None
    memory = {
      "build_and_steps_peak_rss_bytes": sampled,
      "process_peak_rss_bytes": _common.max_rss_bytes(),
    }
    if self.cuda:
      memory["device_peak_bytes"] = self.torch.cuda.max_memory_allocated()
    return {
      "losses_finite": all(math.isfinite(x) for x in self.losses),
      "last_loss": self.losses[-1] if self.losses else None,
      "memory": memory,
      "foreign_modules": _foreign_modules(),
    }

  def finish(self) -> dict:
    return {"foreign_modules": _foreign_modules()}

  # -- helpers -------------------------------------------------------------------------------

  def _step(self):
    self.losses.append(self._train_step(self.batch)["loss"])  # float(): waits for the step

  def _sync(self):
    if self.cuda:
      self.torch.cuda.synchronize()

  def _model_flops(self, rows: int) -> float:
    """Useful FLOPs of forward + backward on the batch's first ``rows`` rows, by torch's FLOP
    counter (convolutions and matrix products: linear in the batch)."""
    from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top

    self.model.train()
    counter = FlopCounterMode(display=False)
    with counter:
      loss, _ = self.model.loss({k: v[:rows] for k, v in self.batch.items()})
      loss.backward()
    self.model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())

  def _release(self):
    """Drops the previous batch's model, optimizer and data before the next build."""
    import gc  # pylint: disable=g-import-not-at-top

    self.model = self.batch = self._train_step = None
    self.losses = []
    if self.sampler is not None:
      self.sampler.__exit__(None, None, None)
      self.sampler = None
    gc.collect()
    if self.cuda:
      self.torch.cuda.empty_cache()
      self.torch.cuda.reset_peak_memory_stats()

  def _settings(self, channels_last: bool, mode: str) -> dict:
    torch = self.torch
    out = {
      "channels_last": channels_last,
      "autocast": "bfloat16" if mode == "amp" else None,
      "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if self.cuda:
      out.update(
        cudnn_benchmark=torch.backends.cudnn.benchmark,
        cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
        matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
      )
    else:
      out["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    return out


def _foreign_modules() -> list[str]:
  return [m for m in FOREIGN if m in sys.modules]


def main(args) -> int:
  _common.die_with_parent()
  channel = _common.WorkerChannel()
  faulthandler.enable()
  _common.maybe_simulate_crash("startup", args.simulate_crash)
  t0 = time.perf_counter()
  cores = _common.pin_cores(args.pin_threads) if args.pin_threads else None
  if args.omp_wait_policy:
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # read when libgomp loads
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    channel.send(
      event="hello",
      ok=False,
      error=f"{e}. Install PyTorch (pip install -e '.[bench]'; CPU build: "
      "benchmarks/README.md) or pass --skip-torch.",
    )
    return 2
  if args.pin_threads:
    torch.set_num_threads(args.pin_threads)
  cuda = torch.cuda.is_available() and args.device != "cpu"
  channel.send(
    event="hello",
    ok=True,
    framework="torch",
    pid=os.getpid(),
    import_s=time.perf_counter() - t0,
    cuda_available=torch.cuda.is_available(),
    device_kind=torch.cuda.get_device_name(0) if cuda else None,
    versions={
      "torch": torch.__version__,
      "cuda": torch.version.cuda,
      "python": sys.version.split()[0],
    },
    threads=torch.get_num_threads(),
    cores=cores,
    cpu_capability=torch.backends.cpu.get_cpu_capability(),
    foreign_modules=_foreign_modules(),
  )
  worker = TorchWorker(args, torch)
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
