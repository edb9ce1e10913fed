"""Cost of the subset fusion against the number of modalities: vectorized vs a loop over subsets.

  python benchmarks/fusion_scaling.py                       # M = 2..10, latent 512, batch 64
  python benchmarks/fusion_scaling.py --max-m 8 --loop-max-m 8 --batch 32 --step-size none

The loop version stops at --loop-max-m (default 7): unrolled, it compiles ~4x slower per extra
modality (2 minutes at M = 7 on 2 cores, ~10 at M = 8, hours at M = 10).

The fusion of a MoPoE step, forward and backward (gradients w.r.t. every unimodal mu and
logvar): product of experts for all K = 2^M - 1 subsets, validity of each subset from the
availability mask, a mixture assignment per row ('random': 'slice' needs a batch of at least K
rows), one reparameterised z per row, the mixture-weighted KL of every subset, and a stand-in
decoder loss on z. Two jitted versions:
- ``vectorized``: the project's functions (mopoe_jax.vae.fusion: subset_posteriors, valid_subsets,
  assign_subsets, sample_mixture, subset_weights, kl_divergence_terms): a few einsums over a
  [K, M] mask, the same handful of operations for every M;
- ``loop``: written here, a Python loop over the K subsets (per-subset precision sums, KL and
  sample), which unrolls into O(K * M) operations that XLA must compile.
Both compute the same loss from the same random draws (checked). Printed per M: K, compile time
(lower + compile), median run time (wall and process CPU time) and the loop / vectorized ratios.
Then the fusion's share of a full training step at M = 3 with the step's own shapes
(--step-size paper: 128 px, latent 512, batch 8; synthetic: 64 px, latent 64, batch 64), both
timed in this process. Writes benchmarks/results/fusion_scaling.json. Each line carries
os.getloadavg(): on a shared machine run times move with the load.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

if __package__ in (None, ""):
  # The repository root first: a script folder on sys.path must not shadow the packages.
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np

from benchmarks import _common
from benchmarks._common import load

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "fusion_scaling.json")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--min-m", type=int, default=2)
  parser.add_argument("--max-m", type=int, default=10)
  parser.add_argument(
    "--loop-max-m",
    type=int,
    default=7,
    help="largest M for the loop version: its compile time grows ~4x per M "
    "(2 minutes at M = 7 on 2 cores, ~10 at M = 8)",
  )
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--latent", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--prior-expert", default="full_set", choices=("none", "full_set", "all"))
  parser.add_argument(
    "--missing",
    type=float,
    default=0.0,
    help="probability that a modality is missing from an example",
  )
  parser.add_argument(
    "--step-size",
    default="paper",
    choices=("paper", "synthetic", "none"),
    help="config of the full step for the M = 3 share ('none': skip)",
  )
  parser.add_argument(
    "--step-batch",
    type=int,
    default=None,
    help="batch of that step (default: paper 8, synthetic 64)",
  )
  parser.add_argument("--threads", type=int, default=None, help="pin to this many cores")
  parser.add_argument(
    "--no-xla-defaults",
    action="store_true",
    help="do not add mopoe_jax.platform.runtime's CPU flags (main.py adds them)",
  )
  parser.add_argument("--out", default=RESULTS)
  return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# The two versions of the fusion. mu, logvar: [M, B, D]; available: bool [B, M].


def stand_in_decoder_loss(z):
  """A cheap stand-in for the decoders, so that the gradient flows through the sampled z."""
  import jax.numpy as jnp

  return 0.5 * jnp.mean(jnp.sum(jnp.square(z), axis=-1))


def vectorized_loss(
  mu, logvar, available, rng, *, mask, prior_expert: str, assignment: str = "random"
):
  """The project's fusion: every subset at once."""
  import jax
  import jax.numpy as jnp

  from mopoe_jax.vae import fusion

  batch_size = mu.shape[1]
  mu_k, logvar_k = fusion.subset_posteriors(mu, logvar, mask, available, prior_expert)
  valid = fusion.valid_subsets(mask, available, batch_size)
  assign_rng, z_rng = jax.random.split(rng)
  chosen = fusion.assign_subsets(assign_rng, valid, assignment)
  z = fusion.sample_mixture(z_rng, mu_k, logvar_k, chosen)
  kl = fusion.kl_divergence_terms(mu_k, logvar_k, fusion.subset_weights(valid))
  return jnp.mean(kl) + stand_in_decoder_loss(z)


def loop_loss(mu, logvar, available, rng, *, mask, prior_expert: str):
  """The same computation with a Python loop over the K subsets (unrolled by jit)."""
  import jax
  import jax.numpy as jnp

  from mopoe_jax.vae import fusion

  num_subsets = mask.shape[0]
  prior = fusion.prior_flags(mask, prior_expert)
  avail = available.astype(mu.dtype)  # [B, M]
  precision = 1.0 / (jnp.exp(logvar) + 1e-8)  # [M, B, D]
  assign_rng, z_rng = jax.random.split(rng)
  eps = jax.random.normal(z_rng, mu.shape[1:], mu.dtype)  # as sample_mixture draws it
  valids, kls, samples = [], [], []
  for k in range(num_subsets):
    members = np.flatnonzero(mask[k])
    total = prior[k] + sum(precision[m] * avail[:, m, None] for m in members)
    weighted = sum(precision[m] * mu[m] * avail[:, m, None] for m in members)
    has = total > 0
    safe = jnp.where(has, total, 1.0)
    mu_k, logvar_k = weighted / safe, -jnp.log(safe)
    valid_k = functools.reduce(jnp.logical_and, [available[:, m] for m in members])
    valids.append(valid_k)
    kls.append(0.5 * jnp.sum(jnp.exp(logvar_k) + jnp.square(mu_k) - 1.0 - logvar_k, axis=-1))
    samples.append(mu_k + jnp.exp(0.5 * logvar_k) * eps)
  valid = jnp.stack(valids, axis=1)  # [B, K]
  count = jnp.maximum(valid.sum(axis=1).astype(mu.dtype), 1.0)
  kl = sum(jnp.where(valids[k], kls[k] / count, 0.0) for k in range(num_subsets))
  chosen = fusion.assign_subsets(assign_rng, valid, "random")
  z = sum(jnp.where((chosen == k)[:, None], samples[k], 0.0) for k in range(num_subsets))
  return jnp.mean(kl) + stand_in_decoder_loss(z)


# ---------------------------------------------------------------------------------------------


def compile_and_time(fn, args, repeats: int) -> tuple[dict, object]:
  import jax

  jitted = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
  t = time.perf_counter()
  lowered = jitted.lower(*args)
  lower_s = time.perf_counter() - t
  t = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t
  out = compiled(*args)
  jax.block_until_ready(out)
  wall, cpu = [], []
  for _ in range(repeats):
    t, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(compiled(*args))
    wall.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  num_ops = compiled.as_text().count("\n  %")
  return (
    {
      "lower_s": lower_s,
      "compile_s": compile_s,
      "run_ms": 1e3 * statistics.median(wall),
      "run_min_ms": 1e3 * min(wall),
      "cpu_ms": 1e3 * statistics.median(cpu),
      "hlo_instructions": num_ops,
      "load": load(),
    },
    out,
  )


def make_inputs(num_modalities: int, batch: int, latent: int, missing: float, seed: int = 0):
  import jax
  import jax.numpy as jnp

  rng = np.random.default_rng(seed)
  mu = jnp.asarray(rng.standard_normal((num_modalities, batch, latent)), jnp.float32)
  logvar = jnp.asarray(0.5 * rng.standard_normal((num_modalities, batch, latent)), jnp.float32)
  available = rng.random((batch, num_modalities)) >= missing
  available[~available.any(axis=1), 0] = True  # every example keeps one modality
  return mu, logvar, jnp.asarray(available), jax.random.PRNGKey(seed)


def scaling(args) -> list[dict]:
  from mopoe_jax.vae import subsets

  rows = []
  print(
    f"{'M':>3} {'K':>5} | {'vectorized: compile s':>21} {'run ms':>8} {'CPU ms':>8} "
    f"{'HLO ops':>8} | {'loop: compile s':>15} {'run ms':>8} {'CPU ms':>8} {'HLO ops':>8} | "
    f"{'loop/vec run':>12} {'compile':>8} | load",
    flush=True,
  )
  for m in range(args.min_m, args.max_m + 1):
    mask = subsets.subset_mask(m)
    inputs = make_inputs(m, args.batch, args.latent, args.missing)
    vec, vec_out = compile_and_time(
      functools.partial(vectorized_loss, mask=mask, prior_expert=args.prior_expert),
      inputs,
      args.repeats,
    )
    row = {"M": m, "K": int(mask.shape[0]), "vectorized": vec}
    line = (
      f"{m:3d} {mask.shape[0]:5d} | {vec['lower_s'] + vec['compile_s']:21.2f} "
      f"{vec['run_ms']:8.2f} {vec['cpu_ms']:8.2f} {vec['hlo_instructions']:8d} | "
    )
    if m <= args.loop_max_m:
      loop, loop_out = compile_and_time(
        functools.partial(loop_loss, mask=mask, prior_expert=args.prior_expert),
        inputs,
        max(3, args.repeats // 4) if m >= 8 else args.repeats,
      )
      diff = abs(float(loop_out[0]) - float(vec_out[0])) / max(abs(float(vec_out[0])), 1e-6)
      if diff > 1e-4:
        raise AssertionError(
          f"M={m}: loop loss {float(loop_out[0])} != vectorized {float(vec_out[0])}"
        )
      row["loop"] = loop
      row["loop_over_vectorized_run"] = loop["run_ms"] / vec["run_ms"]
      row["loop_over_vectorized_compile"] = (loop["lower_s"] + loop["compile_s"]) / (
        vec["lower_s"] + vec["compile_s"]
      )
      line += (
        f"{loop['lower_s'] + loop['compile_s']:15.2f} {loop['run_ms']:8.2f} "
        f"{loop['cpu_ms']:8.2f} {loop['hlo_instructions']:8d} | "
        f"{row['loop_over_vectorized_run']:12.2f} "
        f"{row['loop_over_vectorized_compile']:8.1f} | "
      )
    else:
      line += f"{'(skipped)':>15} {'':8} {'':8} {'':8} | {'':12} {'':8} | "
    print(line + f"{load():.2f}", flush=True)
    rows.append(row)
  return rows


def step_share(args) -> dict:
  """Time of the M = 3 fusion (model shapes, the model's 'slice' assignment) vs the full step."""
  from configs import default, synthetic
  from mopoe_jax.vae import model as model_lib

  config = (default if args.step_size == "paper" else synthetic).get_config()
  batch = args.step_batch or {"paper": 8, "synthetic": 64}[args.step_size]
  latent = config.model.latent_dim
  model = model_lib.create_model(config, 2900)
  inputs = make_inputs(3, batch, latent, 0.0)
  fusion_t, _ = compile_and_time(
    functools.partial(
      vectorized_loss,
      mask=model.mask,
      prior_expert=config.model.prior_expert,
      assignment=config.model.assignment,
    ),
    inputs,
    max(args.repeats, 50),
  )
  print(
    f"\nfull step for the share: {args.step_size} config, batch {batch}, latent {latent} "
    f"(compiling, load {load():.2f})",
    flush=True,
  )
  import jax  # pylint: disable=g-import-not-at-top

  from mopoe_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top

  step_config = step_lib.StepConfig.from_config(config, model, pad_id=_common.PAD_ID)
  state = jax.jit(functools.partial(step_lib.init_state, model, config))(jax.random.PRNGKey(0))
  data = jax.device_put(
    _common.make_data(config.data.image_size, config.data.text_length, batch, 2900)
  )
  train_step = jax.jit(
    functools.partial(step_lib.train_step, model=model, step_config=step_config),
    donate_argnums=(0,),
  )
  key = jax.random.PRNGKey(1)
  state, _ = jax.block_until_ready(train_step(state, data, key))
  wall, cpu = [], []
  for _ in range(5):
    t, c = time.perf_counter(), time.process_time()
    state, _ = jax.block_until_ready(train_step(state, data, key))
    wall.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  step_ms, step_cpu_ms = 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)
  share = fusion_t["run_ms"] / step_ms
  print(
    f"M=3 fusion forward+backward alone: {fusion_t['run_ms']:.3f} ms "
    f"({fusion_t['cpu_ms']:.3f} ms CPU); full step {step_ms:.0f} ms ({step_cpu_ms:.0f} ms "
    f"CPU): the fusion is {share:.3%} of the step (an upper bound: the standalone time "
    f"includes a dispatch) (load {load():.2f})",
    flush=True,
  )
  return {
    "config": args.step_size,
    "batch": batch,
    "latent": latent,
    "fusion": fusion_t,
    "step_ms": step_ms,
    "step_cpu_ms": step_cpu_ms,
    "share": share,
    "share_cpu": fusion_t["cpu_ms"] / step_cpu_ms,
    "load": load(),
  }


def main(argv=None):
  args = parse_args(argv)
  # Pin the cores, add the flags main.py trains with, keep JAX on the CPU.
  _common.setup_jax_env(args.threads, "", not args.no_xla_defaults)
  import jax

  print(
    f"jax {jax.__version__} ({jax.default_backend()}), {len(os.sched_getaffinity(0))} cores, "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
    f"fusion forward+backward, latent {args.latent}, batch {args.batch}, prior expert "
    f"{args.prior_expert}, missing {args.missing} (load {load():.2f})",
    flush=True,
  )
  report = {
    "jax": jax.__version__,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "batch": args.batch,
    "latent": args.latent,
    "prior_expert": args.prior_expert,
    "missing": args.missing,
    "load_start": load(),
    "scaling": scaling(args),
  }
  if args.step_size != "none":
    report["step_share"] = step_share(args)
  report["load_end"] = load()
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  print(f"wrote {args.out} (load {load():.2f})")


if __name__ == "__main__":
  main()
