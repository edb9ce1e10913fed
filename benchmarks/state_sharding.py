"""The train step with its state replicated or split over the devices (``train.shard_optimizer``),
compiled and compared: memory per device, XLA's cost analysis, the collectives.

  python benchmarks/state_sharding.py --cpu_devices 8 --size tiny
  pip install -e '.[tpu]'   # libtpu: compiles for a TPU slice on any machine
  python benchmarks/state_sharding.py --slice v5e:2x4 --batch 25

Variants (``--variants``, comma-separated):
  replicated   the whole state on every device, every device runs the whole Adam update
  split        the library's split state (`mopoe_jax.training.step.StateSharding`): the large
               parameters and Adam moments split over the devices, the parameters gathered
               whole before the forward pass and the gradients summed whole, each behind an
               optimization barrier, then sliced for the update
  unpinned     split without the barriers (a sharding constraint only): XLA is then free to
               move the gather into the networks and the slicing into the gradients
  bf16_gather  unpinned, each split parameter cast to bfloat16 before it is gathered and the
               model given that copy (its gradient goes on in float32). The same numbers only
               where every use of a parameter casts it to bfloat16 anyway; the float32
               text-logits layer is not such a use. An experiment.
  scatter      unpinned, with the gradients constrained to the split layout (a reduce-scatter
               instead of an all-reduce then a slice); the gradient norm is then summed from
               the slices, in another order. An experiment.

Per variant: the memory the step needs per device (`compiled.memory_analysis()`: arguments,
outputs not aliased to them, temporaries), XLA's FLOPs and "bytes accessed" per device, and the
collectives of the optimized program (count and the bytes of their results), and the HBM bytes
per device of `benchmarks.costing.hlo_traffic` beside XLA's "bytes accessed" (which on a TPU also
counts on-chip memory). Nothing runs: the programs are compiled only. `--json` keeps every figure,
the HBM bytes' groups (optimizer update, collectives, ...) included.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import re
import sys
import time

if __package__ in (None, ""):
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks import _common  # noqa: E402  pylint: disable=g-import-not-at-top

VARIANTS = ("replicated", "split", "unpinned", "bf16_gather", "scatter")
_COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
_BYTES = {"f32": 4, "bf16": 2, "s32": 4, "u32": 4, "pred": 1, "u8": 1, "f16": 2, "s8": 1}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=("paper", "synthetic", "tiny"), default="paper")
  parser.add_argument("--slice", default=None, help="a TPU slice, e.g. v5e:2x4 (libtpu needed)")
  parser.add_argument("--cpu_devices", type=int, default=None, help="virtual CPU devices")
  parser.add_argument("--batch", type=int, default=25, help="studies per device")
  parser.add_argument("--variants", default="replicated,split")
  parser.add_argument("--min_elements", type=int, default=None, help="default: the config's")
  parser.add_argument("--vocab", type=int, default=2900)
  parser.add_argument("--hlo_dir", default=None, help="write each optimized program here")
  parser.add_argument("--json", default=None, help="also write every figure to this file")
  return parser.parse_args(argv)


def collectives(hlo_text: str) -> dict:
  """{collective: (count, bytes of its results)} of an optimized HLO module's text. An async
  pair (``-start``, ``-done``) counts once, by its ``-done``, whose result is the collective's."""
  out = collections.defaultdict(lambda: [0, 0])
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?\S+ = (.+?) ([a-z\-]+)\(", line)
    if not m:
      continue
    op = m.group(2)
    base = op[: -len("-done")] if op.endswith("-done") else op
    if base not in _COLLECTIVES:
      continue
    nbytes = 0
    for dtype, dims in re.findall(r"([a-z]+[0-9]*)\[([0-9,]*)\]", m.group(1)):
      nbytes += _prod(filter(None, dims.split(","))) * _BYTES.get(dtype, 4)
    out[base][0] += 1
    out[base][1] += nbytes
  return {k: tuple(v) for k, v in out.items()}


def _variant_step(
  state, batch, rng, *, model, step_config, gather, split_shardings, bf16_gather, scatter
):
  """`step.train_step` with the experimental gather / gradient layouts of the module docstring
  (the same code otherwise), none behind an optimization barrier."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from mopoe_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  from mopoe_jax.vae import objective  # pylint: disable=g-import-not-at-top

  rng = jax.random.fold_in(rng, state.step)

  def cast_gather(p):
    return jax.lax.with_sharding_constraint(p.astype(jnp.bfloat16), gather)

  # The model gets the bfloat16 copy (its bfloat16 layers would cast to it anyway); the
  # gradient arrives in bfloat16 and goes on in float32, as it does from such a layer's own cast.
  gather_bf16 = jax.custom_vjp(cast_gather)
  gather_bf16.defvjp(lambda p: (cast_gather(p), None), lambda _, ct: (ct.astype(jnp.float32),))

  def whole(p, s):
    if s.is_fully_replicated or not bf16_gather:
      return jax.lax.with_sharding_constraint(p, gather)
    return gather_bf16(p)

  params = jax.tree.map(whole, state.params, split_shardings.params)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    terms, available, updates = step_lib._terms(  # pylint: disable=protected-access
      model, step_config, variables, batch, rng, True
    )
    loss, metrics = objective.reduce_terms(terms, step_config.subset_names, available)
    return loss, (metrics, updates["batch_stats"])

  (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  if scatter:
    grads = jax.lax.with_sharding_constraint(grads, split_shardings.params)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (state.bad_step < 0)
  new_state = jax.lax.cond(
    finite,
    lambda s: s.apply_gradients(grads=grads, batch_stats=batch_stats),
    lambda s: s.replace(step=s.step + 1),
    state,
  )
  bad_step = jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step)
  new_state = new_state.replace(bad_step=bad_step.astype(jnp.int32))
  return new_state, dict(metrics, grad_norm=grad_norm, finite=finite.astype(jnp.float32))


def cost_variant(
  config, model, devices, per_device_batch: int, variant: str, hlo_dir: str | None = None
) -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  from benchmarks.costing import hlo_traffic  # pylint: disable=g-import-not-at-top
  from mopoe_jax.data.datasource import MODEL_KEYS  # pylint: disable=g-import-not-at-top
  from mopoe_jax.platform import sharding  # pylint: disable=g-import-not-at-top
  from mopoe_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  from mopoe_jax.vae import model as model_lib  # pylint: disable=g-import-not-at-top

  mesh = jax.sharding.Mesh(devices, (sharding.DATA_AXIS,))
  replicated, sharded = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  split = variant != "replicated"
  layout = step_lib.StateSharding(
    mesh, int(config.train.shard_optimizer_min_elements) if split else None
  )
  shapes = jax.eval_shape(
    functools.partial(step_lib.init_state, model, config), jax.random.PRNGKey(0)
  )
  state_shardings = layout.shardings(shapes)
  state = sharding.abstract(shapes, state_shardings)
  step_config = step_lib.StepConfig.from_config(config, model, pad_id=1)
  batch = sharding.abstract(
    {
      k: v
      for k, v in model_lib.dummy_batch(config, per_device_batch * len(devices)).items()
      if k in MODEL_KEYS
    },
    sharded,
  )
  rng = jax.ShapeDtypeStruct((2,), jax.numpy.uint32, sharding=replicated)
  if variant in ("replicated", "split"):
    fun = functools.partial(
      step_lib.train_step,
      model=model,
      step_config=step_config,
      gather=step_lib.gather_sharding(state),
    )
  else:
    fun = functools.partial(
      _variant_step,
      model=model,
      step_config=step_config,
      gather=replicated,
      split_shardings=state_shardings,
      bf16_gather=variant == "bf16_gather",
      scatter=variant == "scatter",
    )
  jitted = jax.jit(
    fun,
    in_shardings=(state_shardings, sharded, replicated),
    out_shardings=(state_shardings, replicated),
    donate_argnums=(0,),
  )
  tic = time.perf_counter()
  compiled = jitted.lower(state, batch, rng).compile()
  seconds = time.perf_counter() - tic
  memory = compiled.memory_analysis()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  text = compiled.as_text()
  if hlo_dir:
    os.makedirs(hlo_dir, exist_ok=True)
    with open(os.path.join(hlo_dir, f"{variant}.hlo.txt"), "w") as f:
      f.write(text)
  leaves = jax.tree.leaves(state)
  split_leaves = [x for x in leaves if not x.sharding.is_fully_replicated]
  return {
    "variant": variant,
    "devices": len(devices),
    "split_arrays": len(split_leaves),
    "state_bytes_per_device": sum(
      x.dtype.itemsize * _prod(x.sharding.shard_shape(x.shape)) for x in leaves
    ),
    "argument_bytes": memory.argument_size_in_bytes,
    "output_bytes": memory.output_size_in_bytes,
    "alias_bytes": memory.alias_size_in_bytes,
    "temp_bytes": memory.temp_size_in_bytes,
    "bytes_needed": memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
    + memory.temp_size_in_bytes,
    "flops": float(analysis.get("flops", 0.0)),
    "bytes_accessed": float(analysis.get("bytes accessed", 0.0)),
    "hbm_bytes": hlo_traffic.hbm_traffic(text).bytes,
    "hbm_groups": hlo_traffic.attribute(hlo_traffic.hbm_traffic(text)),
    "collectives": collectives(text),
    "compile_seconds": seconds,
  }


def _prod(shape) -> int:
  n = 1
  for d in shape:
    n *= int(d)
  return n


def _mib(n: float) -> str:
  return f"{n / 2**20:,.1f}"


def main(argv=None) -> int:
  args = parse_args(argv)
  if (args.slice is None) == (args.cpu_devices is None):
    raise SystemExit("give one of --slice (a TPU slice) or --cpu_devices")
  if args.cpu_devices:
    _common.add_xla_flags(f"--xla_force_host_platform_device_count={args.cpu_devices}")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no TPU here: do not ask a metadata server
  _common.setup_jax_env(None)
  import jax  # pylint: disable=g-import-not-at-top

  from mopoe_jax.vae import model as model_lib  # pylint: disable=g-import-not-at-top

  config = _common.get_config(args.size)
  if args.min_elements is not None:
    config.train.shard_optimizer_min_elements = args.min_elements
  vocab = args.vocab if args.size == "paper" else 64
  if args.slice:
    from benchmarks.costing import tpu_cost  # pylint: disable=g-import-not-at-top

    devices, platform, where = tpu_cost.topology(args.slice).devices, "tpu", args.slice
  else:
    devices, platform, where = jax.devices()[: args.cpu_devices], "cpu", "CPU"
    where = f"{args.cpu_devices} virtual CPU devices"
  model = model_lib.create_model(config, vocab, platform=platform)
  cpu = _common.cpu_info().get("model", "CPU")
  print(
    f"{args.size} size, {args.batch} studies per device, {where}; compiled on {cpu} "
    f"(jax {jax.__version__}); split arrays: >= {config.train.shard_optimizer_min_elements:,} "
    "elements"
  )
  header = (
    "variant",
    "split arrays",
    "state MiB/device",
    "arguments MiB",
    "temporaries MiB",
    "needed MiB",
    "GFLOP",
    "HBM GiB (hlo_traffic)",
    "XLA bytes accessed GiB",
    "collectives (count, MiB)",
    "compile s",
  )
  print("| " + " | ".join(header) + " |")
  print("|" + " --- |" * len(header))
  rows = []
  for variant in args.variants.split(","):
    if variant not in VARIANTS:
      raise SystemExit(f"unknown variant {variant!r}; known: {VARIANTS}")
    r = cost_variant(config, model, devices, args.batch, variant, args.hlo_dir)
    coll = ", ".join(f"{k} {n} ({_mib(b)})" for k, (n, b) in sorted(r["collectives"].items()))
    row = (
      variant,
      str(r["split_arrays"]),
      _mib(r["state_bytes_per_device"]),
      _mib(r["argument_bytes"]),
      _mib(r["temp_bytes"]),
      _mib(r["bytes_needed"]),
      f"{r['flops'] / 1e9:.1f}",
      f"{r['hbm_bytes'] / 2**30:.2f}",
      f"{r['bytes_accessed'] / 2**30:.2f}",
      coll or "none",
      f"{r['compile_seconds']:.0f}",
    )
    print("| " + " | ".join(row) + " |", flush=True)
    rows.append(r)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
