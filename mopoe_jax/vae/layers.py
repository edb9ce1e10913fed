"""The networks' layers: convolutions, transposed convolutions and the reference's residual block.

Transposed convolutions follow PyTorch's definition (kernel [*k, C_in, C_out], ``padding`` p and
``output_padding`` per spatial dim): out[s*i - p + t] += x[i] * w[t].

Every convolution runs in one of two exact implementations, chosen by the modules'
``conv_impl`` attribute (``model.conv_impl`` in the config; ``model.create_model``
resolves "auto" to "cpu" on the CPU backend and "xla" elsewhere):
- "xla": the plain XLA forms below (:func:`conv`, :func:`conv_transpose`), which cuDNN and the
  TPU compiler run natively;
- "cpu": the rewrites of :mod:`mopoe_jax.vae.cpu_conv` (patches + dot, phase-form transposed
  convolutions, a phase-form input gradient), measured faster on XLA:CPU.
Both compute the same sums, and the modules create the same parameters under either, so a
checkpoint written under one restores and runs under the other.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mopoe_jax.vae import cpu_conv

CONV_IMPLS = ("xla", "cpu")


def check_conv_impl(impl: str) -> None:
  """Raises ValueError unless ``impl`` is a concrete implementation ("xla" or "cpu")."""
  if impl not in CONV_IMPLS:
    raise ValueError(
      f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}. 'auto' is resolved per backend "
      "by model.create_model (model.resolve_conv_impl); modules take the result."
    )


def _dimension_numbers(nd: int):
  """Channels-last layouts of lax convolutions with nd spatial dims."""
  spatial = "HW"[:nd]
  return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


def conv(
  x, kernel, strides: Sequence[int], padding: Sequence[tuple[int, int]], *, impl: str = "xla"
):
  """Cross-correlation, channels last.

  Args:
    x: [B, *n, C_in].
    kernel: [*k, C_in, C_out].
    strides: one int per spatial dim.
    padding: one (lo, hi) pair per spatial dim.
    impl: "xla" (``lax.conv_general_dilated``) or "cpu" (:func:`mopoe_jax.vae.cpu_conv.conv`).
  Returns:
    [B, *out, C_out] with out = (n + lo + hi - k) // s + 1.
  """
  check_conv_impl(impl)
  if impl == "cpu":
    return cpu_conv.conv(x, kernel, strides, padding)
  return jax.lax.conv_general_dilated(
    x,
    kernel.astype(x.dtype),
    tuple(strides),
    [tuple(p) for p in padding],
    dimension_numbers=_dimension_numbers(x.ndim - 2),
  )


def conv_transpose(
  x,
  kernel,
  strides: Sequence[int],
  padding: Sequence[int],
  output_padding: Sequence[int] | None = None,
  *,
  impl: str = "xla",
):
  """PyTorch-semantics transposed convolution, channels last.

  "xla": the native form, a stride-1 convolution of the s-times dilated input with the
  spatially flipped kernel, padded by k - 1 - p (plus output_padding at the end); XLA
  differentiates it natively. "cpu": :func:`mopoe_jax.vae.cpu_conv.conv_transpose`.

  Args:
    x: [B, *n, C_in].
    kernel: [*k, C_in, C_out].
    strides, padding, output_padding: one int per spatial dim (output_padding None: zeros).
    impl: "xla" or "cpu".
  Returns:
    [B, *out, C_out] with out = (n - 1) * s - 2p + k + output_padding.
  """
  check_conv_impl(impl)
  if impl == "cpu":
    return cpu_conv.conv_transpose(x, kernel, strides, padding, output_padding)
  nd = x.ndim - 2
  ks = kernel.shape[:nd]
  output_padding = tuple(output_padding or (0,) * nd)
  flipped = kernel[tuple(slice(None, None, -1) for _ in range(nd))]
  pads = [(k - 1 - p, k - 1 - p + op) for k, p, op in zip(ks, padding, output_padding)]
  return jax.lax.conv_general_dilated(
    x,
    flipped.astype(x.dtype),
    (1,) * nd,
    pads,
    lhs_dilation=tuple(strides),
    dimension_numbers=_dimension_numbers(nd),
  )


class Conv(nn.Module):
  """The nn.Conv uses of this project (explicit padding pairs) through :func:`conv`.

  Same parameters ('kernel' [*k, C_in, C_out], 'bias'), initialisers and auto-names (Conv_0,
  ...) as nn.Conv under either ``conv_impl``, so checkpoints and parameter counts are
  unchanged.
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | None = None
  padding: Sequence[tuple[int, int]] | None = None
  use_bias: bool = True
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  conv_impl: str = "xla"  # "xla" | "cpu" (see the module docstring)

  @nn.compact
  def __call__(self, x):  # x: [B, *spatial, C_in] -> [B, *out, features]
    nd = len(self.kernel_size)
    kernel = self.param(
      "kernel",
      nn.initializers.lecun_normal(),
      (*self.kernel_size, x.shape[-1], self.features),
      self.param_dtype,
    )
    dtype = self.dtype or jnp.promote_types(x.dtype, self.param_dtype)
    y = conv(
      x.astype(dtype),
      kernel.astype(dtype),
      tuple(self.strides or (1,) * nd),
      self.padding or [(0, 0)] * nd,
      impl=self.conv_impl,
    )
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
      y = y + bias.astype(dtype)
    return y


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
  conv_impl: str = "xla"  # "xla" | "cpu" (see the module docstring)

  @nn.compact
  def __call__(self, x):  # x: [B, *spatial, C_in] -> [B, *out, features]
    kernel = self.param(
      "kernel",
      nn.initializers.lecun_normal(),
      (*self.kernel_size, x.shape[-1], self.features),
      self.param_dtype,
    )
    dtype = self.dtype or x.dtype
    y = conv_transpose(
      x.astype(dtype),
      kernel.astype(dtype),
      self.strides,
      self.padding,
      self.output_padding,
      impl=self.conv_impl,
    )
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
      y = y + bias.astype(dtype)
    return y


class BatchNorm(nn.BatchNorm):
  """nn.BatchNorm whose mask may select no position at all.

  Same class name, hence the same auto-names (BatchNorm_0, ...) and variables as nn.BatchNorm.
  With a ``mask`` (bool, broadcastable to x: the positions the batch statistics are taken
  over), nn.BatchNorm divides by the number of selected positions, 0/0 when the mask selects
  none, and the NaN would reach the running averages and, through NaN * 0, the loss. Here a
  mask that selects nothing takes the statistics over all positions instead (finite; the
  outputs then belong to rows nobody uses) and leaves the running averages as they were.
  Without a mask, or with running averages, this is nn.BatchNorm.
  """

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, *, mask: jax.Array | None = None):
    running = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    if running or mask is None:
      return super().__call__(x, use_running_average, mask=mask)
    any_selected = jnp.any(mask)
    mask = jnp.logical_or(mask, jnp.logical_not(any_selected))
    if self.is_initializing():
      return super().__call__(x, use_running_average, mask=mask)
    before = {n: self.get_variable("batch_stats", n) for n in ("mean", "var")}
    y = super().__call__(x, use_running_average, mask=mask)
    for name, value in before.items():
      self.put_variable(
        "batch_stats", name, jnp.where(any_selected, self.get_variable("batch_stats", name), value)
      )
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
  conv_impl: str = "xla"  # "xla" | "cpu" (see the module docstring)

  @nn.compact
  def __call__(self, x, train: bool, present: jax.Array | None = None):
    """Runs the block.

    Args:
      x: [B, *spatial, C_in].
      train: batch statistics and dropout (True) or running averages, no dropout (False).
      present: bool [B], the rows whose batch statistics count in training (the others, e.g.
        zero-filled inputs of a missing modality, shift neither the statistics nor the running
        averages); None: every row.
    Returns:
      [B, *out_spatial, features].
    """
    nd = self.spatial_dims
    is_image = nd == 2
    branch_bias = not is_image
    channels = x.shape[-1]
    drop_dims = tuple(range(1, 1 + nd)) if is_image else ()
    mask = None
    if present is not None and train:
      if present.shape != x.shape[:1]:
        raise ValueError(
          f"present must be bool [B] = {x.shape[:1]}, one flag per row of x, "
          f"got shape {present.shape}."
        )
      mask = present.astype(bool).reshape(-1, *(1,) * (x.ndim - 1))

    def bn(h):
      return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)(
        h, mask=mask
      )

    def conv(features, k, s, p, use_bias):
      kind = ConvTranspose if self.transpose else Conv
      pads = (p,) * nd if self.transpose else [(p, p)] * nd
      return kind(
        features,
        (k,) * nd,
        (s,) * nd,
        pads,
        use_bias=use_bias,
        dtype=self.dtype,
        conv_impl=self.conv_impl,
      )

    k, s, p = self.kernel_size, self.stride, self.padding
    h = nn.relu(bn(x))
    h = conv(channels, 1, 1, 0, branch_bias)(h)
    h = nn.Dropout(self.dropout, broadcast_dims=drop_dims, deterministic=not train)(h)
    h = nn.relu(bn(h))
    h = conv(self.features, k, s, p, branch_bias)(h)
    h = nn.Dropout(self.dropout, broadcast_dims=drop_dims, deterministic=not train)(h)
    shortcut = bn(conv(self.features, k, s, p, True)(x))
    return self.shortcut_scale * shortcut + self.branch_scale * h
