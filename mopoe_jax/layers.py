"""Building blocks: a fast exact transposed convolution and the reference's residual blocks.

Transposed convolutions follow PyTorch's definition (kernel [*k, C_in, C_out], ``padding`` p and
``output_padding`` per spatial dim): out[s*i - p + t] += x[i] * w[t].

XLA:CPU computes the kernel gradient of ``lax.conv_transpose`` very slowly. When the output is
exactly s times the input (k - 2p + output_padding == s, true for every strided transposed
convolution of these networks), the transposed convolution splits into s^d phases, each a
stride-1 convolution of x with a sub-kernel of w. :func:`conv_transpose` builds all phases as
one stride-1 convolution to s^d * C_out channels (the sub-kernels gathered from w) followed by
depth-to-space: the same sums, exactly, with fast gradients.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


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


def conv_transpose(x, kernel, strides: Sequence[int], padding: Sequence[int],
                   output_padding: Sequence[int] | None = None):
  """PyTorch-semantics transposed convolution, channels last.

  Args:
    x: [B, *spatial, C_in].
    kernel: [*k, C_in, C_out].
    strides, padding, output_padding: one int per spatial dim.
  Returns:
    [B, *out_spatial, C_out] with out = (n - 1) * s - 2p + k + output_padding.
  """
  nd = x.ndim - 2
  ks = kernel.shape[:nd]
  output_padding = tuple(output_padding or (0,) * nd)
  spatial = "HW"[:nd] if nd <= 2 else None
  if spatial is None:
    raise ValueError(f"conv_transpose supports 1 or 2 spatial dims, got {nd}.")
  dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
  phase_form = all(k - 2 * p + op == s and s > 1 for k, s, p, op in
                   zip(ks, strides, padding, output_padding))
  if not phase_form:
    # Stride 1 (a plain convolution with the flipped kernel) or an uneven case: the textbook
    # input-dilated form, which is what lax.conv_transpose computes.
    flipped = kernel[tuple(slice(None, None, -1) for _ in range(nd))]
    pads = [(k - 1 - p, k - 1 - p + op) for k, p, op in zip(ks, padding, output_padding)]
    return jax.lax.conv_general_dilated(x, flipped.astype(x.dtype), (1,) * nd, pads,
                                        lhs_dilation=tuple(strides), dimension_numbers=dn)

  # Phase form: gather the sub-kernels into one [L..., C_in, s^d * C_out] kernel.
  tables, pads = [], []
  for k, s, p in zip(ks, strides, padding):
    table, o_min, o_max = _phase_taps(k, s, p)
    tables.append(table)
    pads.append((-o_min, o_max))
  extended = jnp.pad(kernel, [(0, 1)] * nd + [(0, 0), (0, 0)])  # index k is a zero tap
  index = []
  for d, table in enumerate(tables):
    # Axes of the gathered kernel: L_0..L_{nd-1}, a_0..a_{nd-1}.
    shape = [1] * (2 * nd)
    shape[d], shape[nd + d] = table.shape
    index.append(table.reshape(shape))
  gathered = extended[tuple(index)]  # [L..., s..., C_in, C_out]
  c_in, c_out = kernel.shape[-2:]
  perm = list(range(nd)) + [2 * nd] + list(range(nd, 2 * nd)) + [2 * nd + 1]
  gathered = gathered.transpose(perm)  # [L..., C_in, s..., C_out]
  lengths = gathered.shape[:nd]
  phase_kernel = gathered.reshape(*lengths, c_in, int(np.prod(strides)) * c_out)
  y = jax.lax.conv_general_dilated(x, phase_kernel.astype(x.dtype), (1,) * nd, pads,
                                   dimension_numbers=dn)  # [B, *n, s^d * C_out]
  # Depth to space: [B, n_0, .., s_0, .., C_out] -> [B, n_0 * s_0, ..., C_out].
  batch, spatial_in = y.shape[0], y.shape[1:1 + nd]
  y = y.reshape(batch, *spatial_in, *strides, c_out)
  perm = [0]
  for d in range(nd):
    perm += [1 + d, 1 + nd + d]
  y = y.transpose(perm + [1 + 2 * nd])
  return y.reshape(batch, *[n * s for n, s in zip(spatial_in, strides)], c_out)


class ConvTranspose(nn.Module):
  """Transposed convolution with PyTorch's padding semantics (see :func:`conv_transpose`)."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int]
  padding: Sequence[int]
  output_padding: Sequence[int] | None = None
  use_bias: bool = True
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # x: [B, *spatial, C_in]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (*self.kernel_size, x.shape[-1], self.features), self.param_dtype)
    dtype = self.dtype or x.dtype
    y = conv_transpose(x.astype(dtype), kernel.astype(dtype), self.strides, self.padding,
                       self.output_padding)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
      y = y + bias.astype(dtype)
    return y


class ResidualBlock(nn.Module):
  """The reference's residual block, 1-D or 2-D, forward or transposed.

  branch = BN-ReLU-conv1x1-dropout-BN-ReLU-conv(k, s, p)-dropout; shortcut = conv(k, s, p) with
  bias, then BN; output = 2.0 * shortcut + 0.3 * branch. Image blocks (``spatial_dims=2``) have
  no bias in the branch convolutions and channel-wise dropout (Dropout2d); text blocks have
  biases and element-wise dropout. In transposed blocks every convolution is transposed, the
  1x1 included.
  """
  features: int
  kernel_size: int
  stride: int
  padding: int
  spatial_dims: int = 2
  transpose: bool = False
  dropout: float = 0.5
  shortcut_scale: float = 2.0
  branch_scale: float = 0.3
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    nd = self.spatial_dims
    is_image = nd == 2
    branch_bias = not is_image
    channels = x.shape[-1]
    drop_dims = tuple(range(1, 1 + nd)) if is_image else ()

    def bn():
      return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          dtype=self.dtype)

    def conv(features, k, s, p, use_bias):
      if self.transpose:
        return ConvTranspose(features, (k,) * nd, (s,) * nd, (p,) * nd, use_bias=use_bias,
                             dtype=self.dtype)
      return nn.Conv(features, (k,) * nd, (s,) * nd, [(p, p)] * nd, use_bias=use_bias,
                     dtype=self.dtype)

    k, s, p = self.kernel_size, self.stride, self.padding
    h = nn.relu(bn()(x))
    h = conv(channels, 1, 1, 0, branch_bias)(h)
    h = nn.Dropout(self.dropout, broadcast_dims=drop_dims, deterministic=not train)(h)
    h = nn.relu(bn()(h))
    h = conv(self.features, k, s, p, branch_bias)(h)
    h = nn.Dropout(self.dropout, broadcast_dims=drop_dims, deterministic=not train)(h)
    shortcut = bn()(conv(self.features, k, s, p, True)(x))
    return self.shortcut_scale * shortcut + self.branch_scale * h
