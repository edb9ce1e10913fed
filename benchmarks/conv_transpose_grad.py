"""Speed of transposed convolutions and their gradients on XLA:CPU: lax vs the project's phase form.

  python benchmarks/conv_transpose_grad.py                     # batch 64, 64 -> 128 px, 64 -> 64
  python benchmarks/conv_transpose_grad.py --batch 16 --repeats 5
  python benchmarks/conv_transpose_grad.py --no-xla-defaults   # with XLA:CPU's YNNPACK convs

XLA gets the flags that main.py trains with (mopoe_jax.platform.runtime) unless --no-xla-defaults.

Three implementations of the same PyTorch-semantics transposed convolution (k4 s2 p1, output =
2 x input), checked equal before timing:
- ``lax``: ``lax.conv_transpose`` (the textbook input-dilated convolution with the flipped kernel);
- ``phase_gathered``: the project's earlier form: all s^2 phases as one stride-1 convolution with
  a gathered [3, 3, C_in, 4 C_out] kernel (zero taps included: 9/4 of the useful FLOPs), then
  depth-to-space (the library still uses it for fewer than 8 output channels);
- ``phase``: ``mopoe_jax.vae.cpu_conv.conv_transpose``: one stride-1 convolution per phase with its
  own [2, 2, C_in, C_out] sub-kernel (the useful FLOPs only), then the phases interleaved.
For each it times (jitted, median over --repeats after one warm-up call; fewer when one call
takes seconds): the forward, the kernel gradient alone, the input gradient alone, and forward +
both gradients; then one training step (forward, MSE loss, gradients, SGD update) of a 5-layer
VAE-style decoder (z -> 4x4x256, five transposed convolutions 256->128->64->32->16->1 up to
128 px, ReLU between). Prints ms (wall and process CPU time), GFLOP/s of useful work and the
speed-up over ``lax``; writes
benchmarks/results/conv_transpose_grad.json. Timings move with the machine's load: each line
carries os.getloadavg().
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

if __package__ in (None, ""):
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np

RESULTS = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), "results", "conv_transpose_grad.json"
)
IMPLS = ("lax", "phase_gathered", "phase")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--size", type=int, default=64, help="input size (output is twice)")
  parser.add_argument("--channels", type=int, default=64, help="C_in = C_out of the single layer")
  parser.add_argument(
    "--decoder-batch",
    type=int,
    default=None,
    help="batch of the 5-layer decoder step (default: --batch)",
  )
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--threads", type=int, default=None, help="pin to this many cores")
  parser.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS")
  parser.add_argument(
    "--no-xla-defaults",
    action="store_true",
    help="do not add mopoe_jax.platform.runtime's CPU flags (main.py adds them)",
  )
  parser.add_argument(
    "--skip-lax-decoder",
    action="store_true",
    help="skip the (slow) lax variant of the decoder step",
  )
  parser.add_argument("--out", default=RESULTS)
  return parser.parse_args(argv)


def load() -> float:
  return os.getloadavg()[0]


# ---------------------------------------------------------------------------------------------
# The three implementations. Kernel [k, k, C_in, C_out]; out[s*i - p + t] += x[i] * w[t].


def conv_transpose_lax(x, kernel, stride: int, padding: int):
  import jax

  k = kernel.shape[0]
  flipped = kernel[::-1, ::-1]
  pads = [(k - 1 - padding, k - 1 - padding)] * 2
  return jax.lax.conv_transpose(
    x, flipped, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def conv_transpose_phase(x, kernel, stride: int, padding: int):
  from mopoe_jax.vae import cpu_conv

  return cpu_conv.conv_transpose(x, kernel, (stride, stride), (padding, padding))


def conv_transpose_phase_gathered(x, kernel, stride: int, padding: int):
  """The earlier form: all phases as ONE stride-1 convolution with a gathered
  [3, 3, C_in, 4 C_out] kernel (zero taps included), then depth-to-space. The library keeps it
  for fewer than 8 output channels."""
  from mopoe_jax.vae import cpu_conv

  y = cpu_conv._gathered_phase_conv(x, kernel, (stride, stride), (padding, padding))
  batch, n_h, n_w = x.shape[:3]
  y = y.transpose(0, 1, 3, 2, 4, 5)  # [B, n_h, s, n_w, s, C]
  return y.reshape(batch, n_h * stride, n_w * stride, -1)


FUNCS = {
  "lax": conv_transpose_lax,
  "phase_gathered": conv_transpose_phase_gathered,
  "phase": conv_transpose_phase,
}


# ---------------------------------------------------------------------------------------------


def timed(fn, args, repeats: int) -> dict:
  import jax

  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t
  wall, cpu = [], []
  # A pass that takes seconds (lax's kernel gradient) is timed fewer times.
  for _ in range(max(1, min(repeats, int(20.0 / max(first, 1e-3))))):
    t, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    wall.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  return {
    "compile_and_first_s": first,
    "wall_s": statistics.median(wall),
    "cpu_s": statistics.median(cpu),
    "min_wall_s": min(wall),
    "load": load(),
  }


def single_layer(args) -> dict:
  import jax
  import jax.numpy as jnp

  rng = np.random.default_rng(0)
  b, n, c = args.batch, args.size, args.channels
  x = jnp.asarray(rng.standard_normal((b, n, n, c)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((4, 4, c, c)) * 0.05, jnp.float32)
  g = jnp.asarray(rng.standard_normal((b, 2 * n, 2 * n, c)), jnp.float32)
  useful = 2 * b * (2 * n) ** 2 * c * c * 4  # 4 = k^2 / s^2 taps per output
  with jax.default_matmul_precision("highest"):
    ref = np.asarray(jax.jit(lambda x, w: conv_transpose_lax(x, w, 2, 1))(x[:2], w))
    for name in IMPLS[1:]:
      got = np.asarray(jax.jit(lambda x, w, f=FUNCS[name]: f(x, w, 2, 1))(x[:2], w))
      err = float(np.max(np.abs(got - ref)))
      if err > 1e-3 * float(np.max(np.abs(ref))):
        raise AssertionError(f"{name} differs from lax.conv_transpose by {err}")
  print(
    f"single layer: batch {b}, {n} -> {2 * n} px, {c} -> {c} channels, k4 s2 p1: "
    f"{useful / 1e9:.2f} useful GFLOP per pass (load {load():.2f})",
    flush=True,
  )
  results = {}
  for name in IMPLS:
    f = FUNCS[name]

    def fwd(x, w, f=f):
      return f(x, w, 2, 1)

    def kernel_grad(x, w, g, f=f):
      return jax.vjp(lambda w: f(x, w, 2, 1), w)[1](g)[0]

    def input_grad(x, w, g, f=f):
      return jax.vjp(lambda x: f(x, w, 2, 1), x)[1](g)[0]

    def all_grads(x, w, g, f=f):
      y, vjp = jax.vjp(lambda x, w: f(x, w, 2, 1), x, w)
      return y, vjp(g)

    r = {
      "forward": timed(jax.jit(fwd), (x, w), args.repeats),
      "kernel_grad": timed(jax.jit(kernel_grad), (x, w, g), args.repeats),
      "input_grad": timed(jax.jit(input_grad), (x, w, g), args.repeats),
      "forward_and_grads": timed(jax.jit(all_grads), (x, w, g), args.repeats),
    }
    results[name] = r
    for op, t in r.items():
      flops = useful * (3 if op == "forward_and_grads" else 1)
      base = results["lax"][op]["wall_s"]
      print(
        f"  {name:11s} {op:17s} {t['wall_s'] * 1e3:8.1f} ms wall {t['cpu_s'] * 1e3:8.1f} ms CPU"
        f"  {flops / t['wall_s'] / 1e9:6.1f} GFLOP/s  x{base / t['wall_s']:5.2f} vs lax"
        f"  (load {t['load']:.2f})",
        flush=True,
      )
  return {"batch": b, "size_in": n, "channels": c, "useful_flops": useful, "results": results}


def decoder_step(args) -> dict:
  import jax
  import jax.numpy as jnp

  b = args.decoder_batch or args.batch
  widths = (256, 128, 64, 32, 16, 1)
  rng = np.random.default_rng(1)
  params = {"dense": jnp.asarray(rng.standard_normal((64, 16 * widths[0])) * 0.05, jnp.float32)}
  for i, (ci, co) in enumerate(zip(widths[:-1], widths[1:])):
    params[f"conv{i}"] = jnp.asarray(
      rng.standard_normal((4, 4, ci, co)) * (0.5 / np.sqrt(16 * ci)), jnp.float32
    )
  z = jnp.asarray(rng.standard_normal((b, 64)), jnp.float32)
  target = jnp.asarray(rng.random((b, 128, 128, 1)), jnp.float32)
  useful = 2 * b * 64 * 16 * widths[0]
  n = 4
  for ci, co in zip(widths[:-1], widths[1:]):
    n *= 2
    useful += 2 * b * n * n * ci * co * 4
  useful *= 3  # forward, input gradients, kernel gradients
  print(
    f"5-layer decoder step: batch {b}, z 64 -> 4x4x256 -> 128x128x1 "
    f"({' -> '.join(map(str, widths))}), ~{useful / 1e9:.1f} useful GFLOP per step "
    f"(load {load():.2f})",
    flush=True,
  )
  results = {}
  for name in IMPLS:
    if name == "lax" and args.skip_lax_decoder:
      continue
    f = FUNCS[name]

    def loss(params, z, target, f=f):
      h = (z @ params["dense"]).reshape(z.shape[0], 4, 4, widths[0])
      for i in range(len(widths) - 1):
        h = f(h, params[f"conv{i}"], 2, 1)
        if i < len(widths) - 2:
          h = jax.nn.relu(h)
      return jnp.mean(jnp.square(h - target))

    def step(params, z, target, loss=loss):
      value, grads = jax.value_and_grad(loss)(params, z, target)
      return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), value

    t = timed(jax.jit(step), (params, z, target), args.repeats)
    results[name] = t
    base = results.get("lax", t)["wall_s"]
    print(
      f"  {name:11s} step {t['wall_s'] * 1e3:8.1f} ms wall {t['cpu_s'] * 1e3:8.1f} ms CPU  "
      f"{useful / t['wall_s'] / 1e9:6.1f} GFLOP/s  x{base / t['wall_s']:5.2f} vs lax  "
      f"(compile+first {t['compile_and_first_s']:.1f} s, load {t['load']:.2f})",
      flush=True,
    )
  return {"batch": b, "widths": widths, "useful_flops": useful, "results": results}


def main(argv=None):
  args = parse_args(argv)
  if args.threads:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
  if args.xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
  if not args.no_xla_defaults:
    from mopoe_jax.platform import runtime

    runtime.apply_defaults()  # the flags main.py trains with
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax

  print(
    f"jax {jax.__version__} ({jax.default_backend()}), {len(os.sched_getaffinity(0))} cores, "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} (load {load():.2f})",
    flush=True,
  )
  report = {
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "jax": jax.__version__,
    "cores": len(os.sched_getaffinity(0)),
    "load_start": load(),
    "single_layer": single_layer(args),
    "decoder_step": decoder_step(args),
  }
  report["load_end"] = load()
  single = report["single_layer"]["results"]
  print("\nspeed-up of the phase form over lax.conv_transpose (wall):")
  for op in ("forward", "kernel_grad", "input_grad", "forward_and_grads"):
    print(
      f"  {op:17s} phase_gathered "
      f"x{single['lax'][op]['wall_s'] / single['phase_gathered'][op]['wall_s']:.2f}, "
      f"phase x{single['lax'][op]['wall_s'] / single['phase'][op]['wall_s']:.2f}"
    )
  dec = report["decoder_step"]["results"]
  if "lax" in dec:
    print(
      f"  decoder step      phase_gathered "
      f"x{dec['lax']['wall_s'] / dec['phase_gathered']['wall_s']:.2f}, "
      f"phase x{dec['lax']['wall_s'] / dec['phase']['wall_s']:.2f}"
    )
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  print(f"wrote {args.out} (load {load():.2f})")


if __name__ == "__main__":
  main()
