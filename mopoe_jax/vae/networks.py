"""Encoders and decoders of each modality (docs/model.md#networks), as pure Flax Linen modules.

Every width comes from the config; the number of blocks follows from the widths, and the
image size / text length they imply is checked by :func:`check_image_geometry` and
:func:`check_text_geometry` before anything is built.

Image encoder, widths (w_0, ..., w_n): conv 1->w_0 (k3 s2 p1, no bias), residual blocks
w_0->w_1->...->w_{n-1} (k4 s2 p1), a residual block w_{n-1}->w_n (k4 s2 p0) down to 1x1, then
linear heads to mu and logvar. Size = 2 * 2^(n-1) * 4.
Image decoder, widths (v_0, ..., v_n): linear z->v_0, 1x1xv_0, a transposed block v_0->v_1
(k4 s1 p0, 1->4), transposed blocks v_1->...->v_n (k4 s2 p1), a transposed conv v_n->1 (k3 s2
p1, output padding 1, bias, no sigmoid). Size = 4 * 2^(n-1) * 2.
Text encoder, widths (u_0, ..., u_n): embedding(V, u_0), conv1d u_0->u_0 (k4 s2 p1), residual
blocks u_0->u_1->...->u_n (k4 s2 p1) down to length 1, heads. Length = 2^(n+1).
Text decoder, widths (t_0, ..., t_n): linear z->t_0, a transposed block t_0->t_1 (k4 s1 p0,
1->4), transposed blocks up to t_n (k4 s2 p1), a transposed 1x1 conv t_n->V logits.
Length = 4 * 2^(n-1).

Every module takes ``conv_impl`` ("xla" or "cpu", :mod:`mopoe_jax.vae.layers`) and hands it to its
convolutions; the parameters do not depend on it. Encoders take ``present`` (bool [B], the
rows in which their modality exists): in training their batch statistics cover those rows only.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mopoe_jax.vae.layers import Conv, ConvTranspose, ResidualBlock


def image_encoder_size(widths: Sequence[int]) -> int:
  return 2 * 2 ** (len(widths) - 2) * 4


def image_decoder_size(widths: Sequence[int]) -> int:
  return 4 * 2 ** (len(widths) - 2) * 2


def text_encoder_length(widths: Sequence[int]) -> int:
  return 2 ** len(widths)


def text_decoder_length(widths: Sequence[int]) -> int:
  return 4 * 2 ** (len(widths) - 2)


def check_image_geometry(image_size: int, encoder_widths, decoder_widths):
  """Raises ValueError unless the widths produce/consume ``image_size`` pixels."""
  if len(encoder_widths) < 2 or len(decoder_widths) < 2:
    raise ValueError(
      "Image encoder and decoder need at least two widths each, got "
      f"{tuple(encoder_widths)} and {tuple(decoder_widths)}."
    )
  enc, dec = image_encoder_size(encoder_widths), image_decoder_size(decoder_widths)
  if enc != image_size or dec != image_size:
    raise ValueError(
      f"Image size {image_size} does not fit the networks: the encoder widths "
      f"{tuple(encoder_widths)} reduce {enc} px to 1x1 and the decoder widths "
      f"{tuple(decoder_widths)} produce {dec} px. Each extra width doubles the size "
      f"(encoder: size = 8 * 2^(len - 2); decoder: size = 8 * 2^(len - 2))."
    )


def check_text_geometry(text_length: int, encoder_widths, decoder_widths):
  """Raises ValueError unless the widths produce/consume ``text_length`` tokens."""
  if len(encoder_widths) < 1 or len(decoder_widths) < 2:
    raise ValueError(
      "The text encoder needs at least one width and the decoder two, got "
      f"{tuple(encoder_widths)} and {tuple(decoder_widths)}."
    )
  enc, dec = text_encoder_length(encoder_widths), text_decoder_length(decoder_widths)
  if enc != text_length or dec != text_length:
    raise ValueError(
      f"Text length {text_length} does not fit the networks: the encoder widths "
      f"{tuple(encoder_widths)} reduce {enc} tokens to 1 and the decoder widths "
      f"{tuple(decoder_widths)} produce {dec}. Lengths: encoder 2^len, decoder "
      "4 * 2^(len - 2)."
    )


class ImageEncoder(nn.Module):
  widths: Sequence[int]
  latent_dim: int
  dropout: float = 0.5
  dtype: jnp.dtype | None = None
  conv_impl: str = "xla"  # "xla" | "cpu" (mopoe_jax.vae.layers)

  @nn.compact
  def __call__(self, x, train: bool, present: jax.Array | None = None):
    """x: [B, S, S, 1]; present: bool [B] rows with the image (None: all) -> mu, logvar [B, D].

    In training, the residual blocks' batch statistics cover the present rows only.
    """
    w = self.widths
    h = Conv(
      w[0],
      (3, 3),
      (2, 2),
      [(1, 1), (1, 1)],
      use_bias=False,
      dtype=self.dtype,
      conv_impl=self.conv_impl,
    )(x)
    for width in w[1:-1]:
      h = ResidualBlock(
        width, 4, 2, 1, dropout=self.dropout, dtype=self.dtype, conv_impl=self.conv_impl
      )(h, train, present)
    h = ResidualBlock(
      w[-1], 4, 2, 0, dropout=self.dropout, dtype=self.dtype, conv_impl=self.conv_impl
    )(h, train, present)
    h = h.reshape(h.shape[0], -1)
    mu = nn.Dense(self.latent_dim, dtype=self.dtype, name="mu")(h)
    logvar = nn.Dense(self.latent_dim, dtype=self.dtype, name="logvar")(h)
    return mu, logvar


class ImageDecoder(nn.Module):
  widths: Sequence[int]
  dropout: float = 0.5
  dtype: jnp.dtype | None = None
  conv_impl: str = "xla"  # "xla" | "cpu" (mopoe_jax.vae.layers)

  @nn.compact
  def __call__(self, z, train: bool):  # z: [B, D] -> Laplace location [B, S, S, 1]
    w = self.widths
    h = nn.Dense(w[0], dtype=self.dtype)(z)[:, None, None, :]
    h = ResidualBlock(
      w[1],
      4,
      1,
      0,
      transpose=True,
      dropout=self.dropout,
      dtype=self.dtype,
      conv_impl=self.conv_impl,
    )(h, train)
    for width in w[2:]:
      h = ResidualBlock(
        width,
        4,
        2,
        1,
        transpose=True,
        dropout=self.dropout,
        dtype=self.dtype,
        conv_impl=self.conv_impl,
      )(h, train)
    return ConvTranspose(
      1, (3, 3), (2, 2), (1, 1), (1, 1), dtype=self.dtype, conv_impl=self.conv_impl
    )(h)


class TextEncoder(nn.Module):
  widths: Sequence[int]
  latent_dim: int
  vocab_size: int
  dropout: float = 0.5
  # The reference's nn.Embedding(padding_idx=0): id 0 (<exc>) embeds to zeros, learns nothing.
  padding_index: int | None = 0
  dtype: jnp.dtype | None = None
  conv_impl: str = "xla"  # "xla" | "cpu" (mopoe_jax.vae.layers)

  @nn.compact
  def __call__(self, tokens, train: bool, present: jax.Array | None = None):
    """tokens: int [B, T]; present: bool [B] rows with a report (None: all) -> mu, logvar [B, D].

    In training, the residual blocks' batch statistics cover the present rows only.
    """
    w = self.widths
    h = nn.Embed(self.vocab_size, w[0], dtype=self.dtype)(tokens)  # [B, T, w0]
    if self.padding_index is not None:
      h = h * (tokens != self.padding_index)[..., None].astype(h.dtype)
    h = Conv(w[0], (4,), (2,), [(1, 1)], dtype=self.dtype, conv_impl=self.conv_impl)(h)
    for width in w[1:]:
      h = ResidualBlock(
        width,
        4,
        2,
        1,
        spatial_dims=1,
        dropout=self.dropout,
        dtype=self.dtype,
        conv_impl=self.conv_impl,
      )(h, train, present)
    h = h.reshape(h.shape[0], -1)
    mu = nn.Dense(self.latent_dim, dtype=self.dtype, name="mu")(h)
    logvar = nn.Dense(self.latent_dim, dtype=self.dtype, name="logvar")(h)
    return mu, logvar


class TextDecoder(nn.Module):
  widths: Sequence[int]
  vocab_size: int
  dropout: float = 0.5
  dtype: jnp.dtype | None = None
  conv_impl: str = "xla"  # "xla" | "cpu" (mopoe_jax.vae.layers)
  float32_logits: bool = True  # the last layer (logits over the vocabulary) in float32

  @nn.compact
  def __call__(self, z, train: bool):  # z: [B, D] -> logits [B, T, V]
    w = self.widths
    h = nn.Dense(w[0], dtype=self.dtype)(z)[:, None, :]
    h = ResidualBlock(
      w[1],
      4,
      1,
      0,
      spatial_dims=1,
      transpose=True,
      dropout=self.dropout,
      dtype=self.dtype,
      conv_impl=self.conv_impl,
    )(h, train)
    for width in w[2:]:
      h = ResidualBlock(
        width,
        4,
        2,
        1,
        spatial_dims=1,
        transpose=True,
        dropout=self.dropout,
        dtype=self.dtype,
        conv_impl=self.conv_impl,
      )(h, train)
    logits_dtype = jnp.float32 if self.float32_logits else self.dtype
    return ConvTranspose(
      self.vocab_size, (1,), (1,), (0,), dtype=logits_dtype, conv_impl=self.conv_impl
    )(h)
