"""Exact convolutions rewritten for XLA:CPU (``model.conv_impl = "cpu"``).

Every function here computes the same sums as the plain XLA convolution it replaces (channels
last, kernel [*k, C_in, C_out]; transposed convolutions with PyTorch's definition
out[s*i - p + t] += x[i] * w[t], ``padding`` p and ``output_padding`` per spatial dim), in a
form that XLA:CPU runs faster. They were chosen by measuring XLA:CPU (jax 0.10.2, 2 cores;
benchmarks/results/step_optimization.md, forward + both gradients, jitted, median wall ms);
cuDNN and the TPU compiler prefer the native convolutions of :mod:`mopoe_jax.vae.layers`, which
``conv_impl = "xla"`` uses.

The rewrites:
- Patches + one dot (:func:`conv`): 1-D convolutions, and 2-D ones with at most 256 output rows
  (batch x output positions; the batch as traced, i.e. global under jit), run as strided slices,
  a concatenate and one ``dot_general``. XLA:CPU computes those, and their kernel gradients,
  faster than as convolutions: 8 x 4 x 4 outputs, 256 -> 320 channels, 5.3 vs 6.9 ms;
  8 x 1 x 1, 1.6 vs 5.2 ms; the paper's text encoder 186 -> 98 ms. At 1,024 rows (64 x 4 x 4,
  64 -> 96) the dot loses, 5.6 vs 2.9 ms, hence the 256-row limit.
- Phase-form transposed convolution (:func:`conv_transpose`): XLA:CPU computes the kernel
  gradient of ``lax.conv_transpose`` very slowly. When the output is exactly s times the input
  (k - 2p + output_padding == s, true for every strided transposed convolution of the
  networks), output phase a (outputs s*i + a) is a stride-1 convolution of x with the taps of w
  that land on it. Each phase runs with only its own taps (k^d / s^d per output, no zero
  taps), then the phases interleave: XLA's FLOP count of a paper step 138.2 -> 105.9 GFLOP
  (benchmarks/conv_transpose_grad.py). 1-D phases are patches + dot.
- Gathered phases (:func:`_gathered_phase_conv`): with fewer than 8 output channels (the image
  decoders' last layer) per-phase convolutions are too narrow to run fast, so all phases share
  one stride-1 convolution to s^d * C_out channels (some zero taps): the 64 -> 1 layer
  14.5 -> 8.3 ms.
- Phase-form input gradient (:func:`_strided_conv`, a ``jax.custom_vjp``): XLA differentiates
  a stride-s convolution with respect to its input as a convolution of the s-times dilated
  output gradient, s^d times the useful FLOPs, mostly over zeros. The adjoint is the
  transposed convolution of the gradient with the same kernel (C_out -> C_in), run in phase
  form. Used by strided 2-D convolutions with more than 256 output rows whose geometry allows
  it (:func:`_adjoint_padding`): paper encoder, 64 px block 64 -> 128, 35.9 -> 12.2 ms; 32 px
  14.4 -> 10.6; 16 px 5.8 -> 5.0; paper step 1.04x -> 1.17x of PyTorch's speed.
- A 1 x 1-input transposed convolution (the decoders' first block) as one dot batched over
  the kernel positions: the kernel is read in its own layout, with no per-step transposed copy
  of it or of its gradient: image decoder 181.7 -> 176.5 ms, text decoder 212.3 -> 210.1 ms.
"""

from __future__ import annotations

import functools
import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# 2-D convolutions with at most this many output rows (batch x output positions) run as
# patches + one dot: measured forward + both gradients, 8 x 4 x 4 outputs 256 -> 320 channels
# 5.3 vs 6.9 ms, 8 x 1 x 1 1.6 vs 5.2 ms; at 1,024 rows (64 x 4 x 4, 64 -> 96) the dot loses,
# 5.6 vs 2.9 ms.
_DOT_MAX_ROWS = 256
# 2-D transposed convolutions with fewer output channels use one gathered convolution for all
# phases (benchmarks/results/step_optimization.md: the 64 -> 1 layer, 14.5 -> 8.3 ms)
_EXACT_PHASES_MIN_C_OUT = 8


def _dimension_numbers(nd: int):
  """Channels-last layouts of lax convolutions with nd spatial dims."""
  spatial = "HW"[:nd]
  return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


def _patches_dot(x, kernel, strides, padding):
  """Cross-correlation as strided slices + concatenate + one dot_general.

  x: [B, *n, C_in]; kernel: [*k, C_in, C_out]; padding: one (lo, hi) pair per spatial dim
  (negative values crop).
  """
  nd = x.ndim - 2
  ks = kernel.shape[:nd]
  c_in, c_out = kernel.shape[-2:]
  x = jax.lax.pad(
    x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in padding] + [(0, 0, 0)]
  )
  out = [(x.shape[1 + d] - ks[d]) // strides[d] + 1 for d in range(nd)]
  cols = []
  for taps in itertools.product(*[range(k) for k in ks]):
    start = (0, *taps, 0)
    limit = (x.shape[0], *[t + (o - 1) * s + 1 for t, o, s in zip(taps, out, strides)], c_in)
    cols.append(jax.lax.slice(x, start, limit, (1, *strides, 1)))
  patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
  w = kernel.reshape(-1, c_out).astype(patches.dtype)
  return jax.lax.dot_general(patches, w, (((nd + 1,), (0,)), ((), ())))


def conv(x, kernel, strides: Sequence[int], padding: Sequence[tuple[int, int]]):
  """Cross-correlation like lax.conv_general_dilated, channels last.

  1-D convolutions and 2-D ones with at most 256 output rows (batch x output positions; the
  batch as traced, i.e. global under jit) run as patches + one dot: XLA:CPU computes those (and
  their kernel gradients) faster than as convolutions. Larger strided 2-D ones get their input
  gradient from :func:`conv_transpose`.
  """
  nd = x.ndim - 2
  padding = [tuple(p) for p in padding]
  out = [
    (n + lo + hi - k) // s + 1
    for n, (lo, hi), k, s in zip(x.shape[1:-1], padding, kernel.shape[:nd], strides)
  ]
  if nd == 1 or x.shape[0] * int(np.prod(out)) <= _DOT_MAX_ROWS:
    return _patches_dot(x, kernel, tuple(strides), padding)
  kernel = kernel.astype(x.dtype)
  if _adjoint_padding(x.shape[1:-1], kernel.shape[:nd], strides, padding) is not None:
    return _strided_conv(x, kernel, tuple(strides), tuple(padding))
  return _lax_conv(x, kernel, tuple(strides), padding)


def _lax_conv(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(
    x, kernel, strides, padding, dimension_numbers=_dimension_numbers(x.ndim - 2)
  )


def _adjoint_padding(spatial, ks, strides, padding):
  """(p, output_padding) per dim when the input gradient of this strided convolution is a
  phase-form transposed convolution (symmetric padding, k - 2p + op == s > 1), else None."""
  pads, ops = [], []
  for n, k, s, (lo, hi) in zip(spatial, ks, strides, padding):
    out = (n + lo + hi - k) // s + 1
    op = n - ((out - 1) * s - 2 * lo + k)
    if lo != hi or s < 2 or k - 2 * lo + op != s:
      return None
    pads.append(lo)
    ops.append(op)
  return tuple(pads), tuple(ops)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _strided_conv(x, kernel, strides, padding):
  """A strided convolution whose input gradient is the exact phase-form transposed convolution.

  XLA differentiates a stride-s convolution with respect to its input as a convolution of the
  s-times dilated output gradient: s^d times the useful FLOPs, mostly over zeros. The adjoint is
  PyTorch's transposed convolution of the gradient with the same kernel (C_out -> C_in), which
  :func:`conv_transpose` runs phase by phase without zero taps (paper encoder, 64 px block:
  36 -> 12 ms).
  """
  return _lax_conv(x, kernel, strides, padding)


def _strided_conv_fwd(x, kernel, strides, padding):
  return _lax_conv(x, kernel, strides, padding), (x, kernel)


def _strided_conv_bwd(strides, padding, residuals, g):
  x, kernel = residuals
  nd = x.ndim - 2
  pads, ops = _adjoint_padding(x.shape[1:-1], kernel.shape[:nd], strides, padding)
  dx = conv_transpose(g, jnp.swapaxes(kernel, -1, -2), strides, pads, ops)
  _, kernel_vjp = jax.vjp(lambda w: _lax_conv(x, w, strides, padding), kernel)
  return dx, kernel_vjp(g)[0]


_strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


def _phase_taps(k: int, s: int, p: int):
  """Tap table of one dim: int [L, s] of kernel indices (k = zero tap) and the offset range.

  Output s*i + a sums x[i + o] * w[a + p - s*o] over offsets o in [o_min, o_max].
  """
  offsets = [(a + p - t) // s for a in range(s) for t in range(k) if (a + p - t) % s == 0]
  o_min, o_max = min(offsets), max(offsets)
  table = np.full((o_max - o_min + 1, s), k, dtype=np.int32)
  for a in range(s):
    for o in range(o_min, o_max + 1):
      t = a + p - s * o
      if 0 <= t < k:
        table[o - o_min, a] = t
  return table, o_min, o_max


def _gathered_phase_conv(x, kernel, strides, padding):
  """All phases as ONE stride-1 convolution to s^d * C_out channels, kernels padded with zero
  taps to a common [L...] window; returns [B, *n, s..., C_out] (phases not yet interleaved)."""
  nd = x.ndim - 2
  tables, pads = [], []
  for k, s, p in zip(kernel.shape[:nd], strides, padding):
    table, o_min, o_max = _phase_taps(k, s, p)
    tables.append(table)
    pads.append((-o_min, o_max))
  extended = jnp.pad(kernel, [(0, 1)] * nd + [(0, 0), (0, 0)])  # index k is a zero tap
  index = []
  for d, table in enumerate(tables):  # axes of the gathered kernel: L_0.., a_0..
    shape = [1] * (2 * nd)
    shape[d], shape[nd + d] = table.shape
    index.append(table.reshape(shape))
  gathered = extended[tuple(index)]  # [L..., s..., C_in, C_out]
  c_in, c_out = kernel.shape[-2:]
  perm = list(range(nd)) + [2 * nd] + list(range(nd, 2 * nd)) + [2 * nd + 1]
  gathered = gathered.transpose(perm)  # [L..., C_in, s..., C_out]
  phase_kernel = gathered.reshape(*gathered.shape[:nd], c_in, int(np.prod(strides)) * c_out)
  y = jax.lax.conv_general_dilated(
    x, phase_kernel.astype(x.dtype), (1,) * nd, pads, dimension_numbers=_dimension_numbers(nd)
  )
  return y.reshape(*y.shape[:-1], *strides, c_out)


def _phases(k: int, s: int, p: int) -> list[tuple[int, list[int]]]:
  """Per output phase a (outputs s*i + a): (o, taps), where x[i + o + j] meets w[taps[j]]."""
  phases = []
  for a in range(s):
    offsets = [o for o in range((a + p - k) // s, (a + p) // s + 1) if 0 <= a + p - s * o < k]
    phases.append((offsets[0] if offsets else 0, [a + p - s * o for o in offsets]))
  return phases


def conv_transpose(
  x,
  kernel,
  strides: Sequence[int],
  padding: Sequence[int],
  output_padding: Sequence[int] | None = None,
):
  """PyTorch-semantics transposed convolution, channels last.

  When the output is exactly s times the input, output phase a (outputs s*i + a per dim) is a
  stride-1 correlation of x with the taps of w that land on it; every phase runs with only its
  own taps (k^d / s^d per output: the useful FLOPs, no zero taps), then the phases interleave.
  2-D phases are XLA convolutions; 1-D phases, and a 1 x 1 input, are dots.

  Args:
    x: [B, *spatial, C_in].
    kernel: [*k, C_in, C_out].
    strides, padding, output_padding: one int per spatial dim.
  Returns:
    [B, *out_spatial, C_out] with out = (n - 1) * s - 2p + k + output_padding.
  """
  nd = x.ndim - 2
  ks = kernel.shape[:nd]
  c_out = kernel.shape[-1]
  output_padding = tuple(output_padding or (0,) * nd)
  if nd not in (1, 2):
    raise ValueError(f"conv_transpose supports 1 or 2 spatial dims, got {nd}.")
  phase_form = all(
    k - 2 * p + op == s and s > 1 for k, s, p, op in zip(ks, strides, padding, output_padding)
  )
  if not phase_form:
    if all(n == 1 for n in x.shape[1:-1]) and not any(padding) and not any(output_padding):
      # A 1 x 1 input: out[t] = x . w[t] at every kernel position t. One dot batched over t
      # reads the kernel in its own layout (no per-step transposed copy of it, nor of its
      # gradient); only the small [t, B, C_out] result is transposed.
      w = kernel.reshape(-1, *kernel.shape[-2:]).astype(x.dtype)  # [T, C_in, C_out]
      xs = jnp.broadcast_to(x.reshape(1, x.shape[0], -1), (w.shape[0], x.shape[0], w.shape[1]))
      y = jax.lax.dot_general(xs, w, (((2,), (1,)), ((0,), (0,))))  # [T, B, C_out]
      return jnp.swapaxes(y, 0, 1).reshape(x.shape[0], *ks, c_out)
    flipped = kernel[tuple(slice(None, None, -1) for _ in range(nd))]
    pads = [(k - 1 - p, k - 1 - p + op) for k, p, op in zip(ks, padding, output_padding)]
    if all(s == 1 for s in strides) and nd == 1:
      return _patches_dot(x, flipped, (1,), pads)
    return jax.lax.conv_general_dilated(
      x,
      flipped.astype(x.dtype),
      (1,) * nd,
      pads,
      lhs_dilation=tuple(strides),
      dimension_numbers=_dimension_numbers(nd),
    )

  batch, n = x.shape[0], x.shape[1 : 1 + nd]
  if nd == 2 and c_out < _EXACT_PHASES_MIN_C_OUT:
    # Few output channels: per-phase convolutions would be too narrow to run fast, so all
    # phases go into one convolution to s^d * C_out channels (with some zero taps).
    y = _gathered_phase_conv(x, kernel, strides, padding)  # [B, *n, s..., C_out]
    perm = [0]
    for d in range(nd):
      perm += [1 + d, 1 + nd + d]
    y = y.transpose(perm + [1 + 2 * nd])
    return y.reshape(batch, *[m * s for m, s in zip(n, strides)], c_out)
  outs = []
  for combo in itertools.product(*[_phases(k, s, p) for k, s, p in zip(ks, strides, padding)]):
    if any(not taps for _, taps in combo):  # no tap lands on this phase
      outs.append(jnp.zeros((batch, *n, c_out), x.dtype))
      continue
    index = np.ix_(*[np.asarray(taps) for _, taps in combo])
    sub = kernel[index]  # [*L, C_in, C_out]
    pads = [(-o, o + len(taps) - 1) for o, taps in combo]
    if nd == 1:
      outs.append(_patches_dot(x, sub, (1,), pads))
    else:
      outs.append(
        jax.lax.conv_general_dilated(
          x, sub.astype(x.dtype), (1,) * nd, pads, dimension_numbers=_dimension_numbers(nd)
        )
      )
  # [s_0 * s_1, B, *n, C] -> [B, n_0, s_0, n_1, s_1, C] -> [B, n_0 * s_0, n_1 * s_1, C]
  y = jnp.stack(outs).reshape(*strides, batch, *n, c_out)
  perm = [nd]
  for d in range(nd):
    perm += [nd + 1 + d, d]
  y = y.transpose(perm + [2 * nd + 1])
  return y.reshape(batch, *[m * s for m, s in zip(n, strides)], c_out)
