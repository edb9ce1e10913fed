"""An independent PyTorch baseline of the paper's MoPoE-VAE, for side-by-side speed benchmarks.

Written from docs/model.md (networks, likelihoods, subsets, training) in the style of the public
reference code (Klug et al. 2021):
NCHW / NCL tensors, ``torch.nn`` modules, eager execution, Adam. It imports nothing from
``mopoe_jax`` so that the two implementations stay independent. Torch is only in the ``bench``
extra.

Networks (widths, image size, text length, vocabulary and latent size are config values):

- Image encoder: conv 1->w0 (k3 s2 p1, no bias); residual blocks w0->w1->...(k4 s2 p1) down to
  4x4, a last residual block (k4 s2 p0) down to 1x1; flatten; linear heads ``mu``, ``logvar``.
- Image decoder: linear z->w0, reshape to [w0, 1, 1]; a transposed residual block (k4 s1 p0,
  1x1 -> 4x4), transposed residual blocks (k4 s2 p1) up to S/2; a transposed conv w_last->1
  (k3 s2 p1, output padding 1, with bias, no sigmoid). Output is the Laplace location.
- Text encoder: embedding(V, E, padding_idx 0) -> conv1d E->w0 (k4 s2 p1, bias) -> 1-D residual
  blocks (k4 s2 p1) down to length 1 -> linear heads. The reference's two extra blocks (which
  never run at 128 tokens) are not built.
- Text decoder: linear z->w0 at length 1 -> transposed 1-D residual block (k4 s1 p0, 1 -> 4) ->
  transposed 1-D residual blocks (k4 s2 p1) up to T -> conv1d 1x1 w_last->V: LOGITS [B, V, T].

Residual block: BN-ReLU-conv1x1-dropout-BN-ReLU-conv(k,s,p)-dropout; shortcut conv(k,s,p) WITH
bias + BN (always built); out = 2.0 * shortcut + 0.3 * branch. Image main-branch convs have no
bias and use Dropout2d; text convs have biases and plain Dropout; in the transposed (decoder)
blocks the 1x1 conv is a transposed conv too (image and text, as in the reference; a 1x1
stride-1 transposed conv has the same parameters and cost as a 1x1 conv).

Parameter counts at the paper's sizes (checked by ``test_torch_mopoe.py``; the table in
docs/model.md#networks):
image encoder 9,081,728, image decoder 5,769,921, text encoder 11,569,024, text decoder
17,968,596, whole model 59,240,918. Structural choices that make them match exactly:
- image stem conv without bias (576 = 9 * 64) and nothing after it; heads are Linear(320, 512)
  WITH bias (164,352 each); BN has affine weight+bias (running stats are buffers, not counted);
- image blocks: conv1x1 and conv(k,s,p) without bias, shortcut conv with bias + BN, two BNs over
  the input channels (64->128 block: 128 + 4,096 + 128 + 131,072 + 131,200 + 256 = 266,880);
- image decoder: first linear Linear(512, 320) WITH bias (164,160); final transposed conv
  64->1 k3 with bias (577);
- text encoder: embedding 2,900 x 128 (371,200), stem Conv1d(128, 128, 4) with bias (65,664),
  six blocks 128->256->384->512->512->512->640 with biases everywhere (10,475,776), heads
  Linear(640, 512) with bias (328,192 each); the reference's blocks 7 and 8 (640->640, 3,692,160
  each = the 7,384,320 "built but never run") are left out;
- text decoder: Linear(512, 640) with bias (328,320), blocks 640->640 (x3), 640->512, 512->512,
  512->128 (17,266,176), final Conv1d(128, 2,900, 1) with bias (374,100).
No count needed a change away from docs/model.md#networks as written.

MoPoE (docs/model.md#subsets-products-of-experts-and-the-mixture): precisions
T_m = 1/(exp(logvar_m) + 1e-8); for all K subsets at once (a [K, M] mask, no Python loop over
subsets) T_k = sum_{m in k} T_m (+1 for the prior expert where
enabled), mu_k = sum T_m mu_m / T_k, logvar_k = -log T_k. The mixture is sampled by deterministic
batch slicing (rows [k*floor(B/K), (k+1)*floor(B/K)) use subset k, the last subset takes the
remainder) or, as an option, by a random subset per row; one reparameterised z per row; every
decoder decodes z. Loss per example = sum_m w_m * NLL_m + beta * mean_k KL(q_k || N(0, I)),
Laplace(scale 0.75) for images, categorical cross-entropy from logits for text; loss = batch mean.

Timing by hand (not part of any test):
  python benchmarks/torch_mopoe.py --batch-sizes 8 32 --steps 5 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import statistics
import time
from typing import Callable, Mapping

import torch
from torch import nn
import torch.nn.functional as F

MODALITIES = ("frontal", "lateral", "text")
PRIOR_EXPERT_CHOICES = ("none", "full_set", "all")
MIXTURE_CHOICES = ("slice", "random")
VARIANTS = ("mopoe", "poe", "moe")
POE_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class TorchModelConfig:
  """Sizes and loss settings; the defaults are the paper's final model (docs/model.md).

  Width tuples: ``image_encoder_widths[0]`` is the stem conv's output, each further entry one
  residual block's output; ``image_decoder_widths[0]`` is the first linear's output (at 1x1),
  each further entry one transposed block's output; likewise for text (``text_encoder_widths[0]``
  is the stem conv's output). The number of blocks follows from the sizes: log2(S) - 2 image
  blocks, log2(T) - 1 text blocks; each width tuple has one entry more than that.
  """

  latent_dim: int = 512
  vocab_size: int = 2900
  image_size: int = 128
  text_length: int = 128
  image_channels: int = 1
  text_embed_dim: int = 128
  image_encoder_widths: tuple[int, ...] = (64, 128, 192, 256, 320, 320)
  image_decoder_widths: tuple[int, ...] = (320, 256, 192, 128, 64, 64)
  text_encoder_widths: tuple[int, ...] = (128, 256, 384, 512, 512, 512, 640)
  text_decoder_widths: tuple[int, ...] = (640, 640, 640, 640, 512, 512, 128)
  residual_a: float = 2.0  # weight of the shortcut
  residual_b: float = 0.3  # weight of the main branch
  dropout: float = 0.5
  embedding_padding_idx: int | None = 0  # the reference's (index 0 is <exc>, not <pad>)
  # Loss and mixture.
  variant: str = "mopoe"
  prior_expert: str = "full_set"
  mixture: str = "slice"
  image_scale: float = 0.75
  rec_weights: tuple[float, float, float] = (1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0)
  beta: float = 1.0
  mask_text_padding: bool = False  # the reference scores all positions, padding included
  pad_id: int = 1
  learning_rate: float = 5e-4
  adam_betas: tuple[float, float] = (0.9, 0.999)

  def __post_init__(self):
    for name, size, minimum in (
      ("image_size", self.image_size, 8),
      ("text_length", self.text_length, 4),
    ):
      if size < minimum or size & (size - 1):
        raise ValueError(f"{name} must be a power of two >= {minimum}, got {size}.")
    checks = (
      ("image_encoder_widths", self.num_image_blocks),
      ("image_decoder_widths", self.num_image_blocks),
      ("text_encoder_widths", self.num_text_blocks),
      ("text_decoder_widths", self.num_text_blocks),
    )
    for name, blocks in checks:
      widths = getattr(self, name)
      if len(widths) != blocks + 1:
        raise ValueError(
          f"{name} needs {blocks + 1} entries (stem/linear + {blocks} blocks) for image size "
          f"{self.image_size} / text length {self.text_length}, got {len(widths)}: {widths}."
        )
    if self.prior_expert not in PRIOR_EXPERT_CHOICES:
      raise ValueError(
        f"prior_expert must be one of {PRIOR_EXPERT_CHOICES}, got {self.prior_expert!r}."
      )
    if self.mixture not in MIXTURE_CHOICES:
      raise ValueError(f"mixture must be one of {MIXTURE_CHOICES}, got {self.mixture!r}.")
    if self.variant not in VARIANTS:
      raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}.")
    if len(self.rec_weights) != len(MODALITIES):
      raise ValueError(f"rec_weights needs {len(MODALITIES)} entries, got {self.rec_weights}.")

  @property
  def num_image_blocks(self) -> int:
    return int(math.log2(self.image_size)) - 2

  @property
  def num_text_blocks(self) -> int:
    return int(math.log2(self.text_length)) - 1


def tiny_config(**overrides) -> TorchModelConfig:
  """A small config for tests: 32 px, 32 tokens, narrow widths."""
  values = dict(
    latent_dim=16,
    vocab_size=50,
    image_size=32,
    text_length=32,
    text_embed_dim=8,
    image_encoder_widths=(8, 16, 24, 32),
    image_decoder_widths=(32, 24, 16, 8),
    text_encoder_widths=(8, 16, 24, 32, 40),
    text_decoder_widths=(40, 32, 24, 16, 8),
  )
  values.update(overrides)
  return TorchModelConfig(**values)


# ---------------------------------------------------------------------------------------------
# Residual blocks (the reference's constants: out = a * shortcut + b * branch, a=2.0, b=0.3).


class ResidualBlock2dConv(nn.Module):
  """Image encoder block: BN-ReLU-conv1x1-Dropout2d-BN-ReLU-conv(k,s,p)-Dropout2d, no biases;
  shortcut conv(k,s,p) with bias + BN."""

  def __init__(
    self, channels_in, channels_out, kernel_size, stride, padding, a=2.0, b=0.3, dropout=0.5
  ):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(channels_in)
    self.conv1 = nn.Conv2d(channels_in, channels_in, kernel_size=1, bias=False)
    self.dropout1 = nn.Dropout2d(p=dropout)
    self.bn2 = nn.BatchNorm2d(channels_in)
    self.conv2 = nn.Conv2d(
      channels_in, channels_out, kernel_size=kernel_size, stride=stride, padding=padding, bias=False
    )
    self.dropout2 = nn.Dropout2d(p=dropout)
    self.relu = nn.ReLU(inplace=True)
    self.shortcut = nn.Sequential(
      nn.Conv2d(
        channels_in,
        channels_out,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        bias=True,
      ),
      nn.BatchNorm2d(channels_out),
    )
    self.a = a
    self.b = b

  def forward(self, x):
    out = self.dropout1(self.conv1(self.relu(self.bn1(x))))
    out = self.dropout2(self.conv2(self.relu(self.bn2(out))))
    return self.a * self.shortcut(x) + self.b * out


class ResidualBlock2dTransposeConv(nn.Module):
  """Image decoder block: as ResidualBlock2dConv with transposed convolutions (1x1 included)."""

  def __init__(
    self,
    channels_in,
    channels_out,
    kernel_size,
    stride,
    padding,
    output_padding=0,
    a=2.0,
    b=0.3,
    dropout=0.5,
  ):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(channels_in)
    self.conv1 = nn.ConvTranspose2d(channels_in, channels_in, kernel_size=1, bias=False)
    self.dropout1 = nn.Dropout2d(p=dropout)
    self.bn2 = nn.BatchNorm2d(channels_in)
    self.conv2 = nn.ConvTranspose2d(
      channels_in,
      channels_out,
      kernel_size=kernel_size,
      stride=stride,
      padding=padding,
      output_padding=output_padding,
      bias=False,
    )
    self.dropout2 = nn.Dropout2d(p=dropout)
    self.relu = nn.ReLU(inplace=True)
    self.shortcut = nn.Sequential(
      nn.ConvTranspose2d(
        channels_in,
        channels_out,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        bias=True,
      ),
      nn.BatchNorm2d(channels_out),
    )
    self.a = a
    self.b = b

  def forward(self, x):
    out = self.dropout1(self.conv1(self.relu(self.bn1(x))))
    out = self.dropout2(self.conv2(self.relu(self.bn2(out))))
    return self.a * self.shortcut(x) + self.b * out


class ResidualBlock1dConv(nn.Module):
  """Text encoder block: convolutions with bias, element-wise Dropout."""

  def __init__(
    self, channels_in, channels_out, kernel_size, stride, padding, a=2.0, b=0.3, dropout=0.5
  ):
    super().__init__()
    self.bn1 = nn.BatchNorm1d(channels_in)
    self.conv1 = nn.Conv1d(channels_in, channels_in, kernel_size=1, bias=True)
    self.dropout1 = nn.Dropout(p=dropout)
    self.bn2 = nn.BatchNorm1d(channels_in)
    self.conv2 = nn.Conv1d(
      channels_in, channels_out, kernel_size=kernel_size, stride=stride, padding=padding, bias=True
    )
    self.dropout2 = nn.Dropout(p=dropout)
    self.relu = nn.ReLU(inplace=True)
    self.shortcut = nn.Sequential(
      nn.Conv1d(
        channels_in,
        channels_out,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        bias=True,
      ),
      nn.BatchNorm1d(channels_out),
    )
    self.a = a
    self.b = b

  def forward(self, x):
    out = self.dropout1(self.conv1(self.relu(self.bn1(x))))
    out = self.dropout2(self.conv2(self.relu(self.bn2(out))))
    return self.a * self.shortcut(x) + self.b * out


class ResidualBlock1dTransposeConv(nn.Module):
  """Text decoder block: transposed convolutions (the 1x1 too) with bias, plain Dropout."""

  def __init__(
    self,
    channels_in,
    channels_out,
    kernel_size,
    stride,
    padding,
    output_padding=0,
    a=2.0,
    b=0.3,
    dropout=0.5,
  ):
    super().__init__()
    self.bn1 = nn.BatchNorm1d(channels_in)
    self.conv1 = nn.ConvTranspose1d(channels_in, channels_in, kernel_size=1, bias=True)
    self.dropout1 = nn.Dropout(p=dropout)
    self.bn2 = nn.BatchNorm1d(channels_in)
    self.conv2 = nn.ConvTranspose1d(
      channels_in,
      channels_out,
      kernel_size=kernel_size,
      stride=stride,
      padding=padding,
      output_padding=output_padding,
      bias=True,
    )
    self.dropout2 = nn.Dropout(p=dropout)
    self.relu = nn.ReLU(inplace=True)
    self.shortcut = nn.Sequential(
      nn.ConvTranspose1d(
        channels_in,
        channels_out,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        bias=True,
      ),
      nn.BatchNorm1d(channels_out),
    )
    self.a = a
    self.b = b

  def forward(self, x):
    out = self.dropout1(self.conv1(self.relu(self.bn1(x))))
    out = self.dropout2(self.conv2(self.relu(self.bn2(out))))
    return self.a * self.shortcut(x) + self.b * out


# ---------------------------------------------------------------------------------------------
# Encoders and decoders.


def _block_kwargs(cfg: TorchModelConfig) -> dict:
  return dict(a=cfg.residual_a, b=cfg.residual_b, dropout=cfg.dropout)


class ImageEncoder(nn.Module):
  """[B, C, S, S] in [0, 1] -> (mu, logvar), each [B, latent_dim]."""

  def __init__(self, cfg: TorchModelConfig):
    super().__init__()
    widths = cfg.image_encoder_widths
    self.stem = nn.Conv2d(
      cfg.image_channels, widths[0], kernel_size=3, stride=2, padding=1, bias=False
    )
    blocks = []
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
      last = i == cfg.num_image_blocks - 1
      # k4 s2 p1 halves the size down to 4x4; the last block (p0) takes 4x4 to 1x1.
      blocks.append(ResidualBlock2dConv(c_in, c_out, 4, 2, 0 if last else 1, **_block_kwargs(cfg)))
    self.blocks = nn.Sequential(*blocks)
    self.mu = nn.Linear(widths[-1], cfg.latent_dim)
    self.logvar = nn.Linear(widths[-1], cfg.latent_dim)

  def forward(self, x):
    h = self.blocks(self.stem(x)).flatten(1)
    return self.mu(h), self.logvar(h)


class ImageDecoder(nn.Module):
  """z [B, latent_dim] -> Laplace location [B, C, S, S] (no sigmoid)."""

  def __init__(self, cfg: TorchModelConfig):
    super().__init__()
    widths = cfg.image_decoder_widths
    self.linear = nn.Linear(cfg.latent_dim, widths[0])
    blocks = []
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
      stride, padding = (1, 0) if i == 0 else (2, 1)  # 1x1 -> 4x4, then doubling
      blocks.append(
        ResidualBlock2dTransposeConv(c_in, c_out, 4, stride, padding, **_block_kwargs(cfg))
      )
    self.blocks = nn.Sequential(*blocks)
    self.out = nn.ConvTranspose2d(
      widths[-1],
      cfg.image_channels,
      kernel_size=3,
      stride=2,
      padding=1,
      output_padding=1,
      bias=True,
    )

  def forward(self, z):
    h = self.linear(z)[:, :, None, None]
    return self.out(self.blocks(h))


class TextEncoder(nn.Module):
  """int64 [B, T] -> (mu, logvar), each [B, latent_dim]."""

  def __init__(self, cfg: TorchModelConfig):
    super().__init__()
    widths = cfg.text_encoder_widths
    self.embedding = nn.Embedding(
      cfg.vocab_size, cfg.text_embed_dim, padding_idx=cfg.embedding_padding_idx
    )
    self.stem = nn.Conv1d(
      cfg.text_embed_dim, widths[0], kernel_size=4, stride=2, padding=1, bias=True
    )
    self.blocks = nn.Sequential(
      *[
        ResidualBlock1dConv(c_in, c_out, 4, 2, 1, **_block_kwargs(cfg))
        for c_in, c_out in zip(widths[:-1], widths[1:])
      ]
    )
    self.mu = nn.Linear(widths[-1], cfg.latent_dim)
    self.logvar = nn.Linear(widths[-1], cfg.latent_dim)

  def forward(self, tokens):
    h = self.embedding(tokens).transpose(1, 2)  # [B, E, T]
    h = self.blocks(self.stem(h)).flatten(1)
    return self.mu(h), self.logvar(h)


class TextDecoder(nn.Module):
  """z [B, latent_dim] -> logits [B, V, T] (channels first, as torch's cross-entropy wants)."""

  def __init__(self, cfg: TorchModelConfig):
    super().__init__()
    widths = cfg.text_decoder_widths
    self.linear = nn.Linear(cfg.latent_dim, widths[0])
    blocks = []
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
      stride, padding = (1, 0) if i == 0 else (2, 1)  # length 1 -> 4, then doubling
      blocks.append(
        ResidualBlock1dTransposeConv(c_in, c_out, 4, stride, padding, **_block_kwargs(cfg))
      )
    self.blocks = nn.Sequential(*blocks)
    self.out = nn.Conv1d(widths[-1], cfg.vocab_size, kernel_size=1, bias=True)

  def forward(self, z):
    return self.out(self.blocks(self.linear(z)[:, :, None]))


# ---------------------------------------------------------------------------------------------
# Subsets, product of experts and the mixture.


def subset_mask(num_modalities: int = len(MODALITIES), variant: str = "mopoe") -> torch.Tensor:
  """Bool [K, M]: the non-empty subsets by size, then in combination order (F, L, T, FL, FT,
  LT, FLT for three modalities); ``poe`` keeps the full set, ``moe`` the singletons."""
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
  rows = []
  for size in range(1, num_modalities + 1):
    if (variant == "poe" and size != num_modalities) or (variant == "moe" and size != 1):
      continue
    for combo in itertools.combinations(range(num_modalities), size):
      rows.append([m in combo for m in range(num_modalities)])
  return torch.tensor(rows, dtype=torch.bool)


def prior_expert_flags(mask: torch.Tensor, prior_expert: str) -> torch.Tensor:
  """Float [K]: 1 where the subset's product includes the prior expert N(0, I)."""
  full = mask.all(dim=1)
  if prior_expert == "none":
    return torch.zeros(mask.shape[0])
  if prior_expert == "full_set":
    return full.float()
  if prior_expert == "all":
    return torch.ones(mask.shape[0])
  raise ValueError(f"prior_expert must be one of {PRIOR_EXPERT_CHOICES}, got {prior_expert!r}.")


def product_of_experts(
  mus: torch.Tensor, logvars: torch.Tensor, mask: torch.Tensor, prior: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
  """mus, logvars [M, B, D]; mask bool [K, M]; prior float [K] -> (mu, logvar) [K, B, D].

  One masked sum over the modality axis for all K subsets at once.
  """
  precision = 1.0 / (torch.exp(logvars) + POE_EPS)  # [M, B, D]
  weights = mask.to(mus.dtype)  # [K, M]
  total = torch.einsum("km,mbd->kbd", weights, precision) + prior.to(mus.dtype)[:, None, None]
  mu = torch.einsum("km,mbd->kbd", weights, precision * mus) / total
  return mu, -torch.log(total)


def mixture_slices(batch_size: int, num_subsets: int) -> list[tuple[int, int]]:
  """The reference's deterministic slicing: subset k takes rows [k*n, (k+1)*n), n = B // K, the
  last subset takes the remainder (B=200, K=7 -> 28 rows each and 32 for the last)."""
  n = batch_size // num_subsets
  return [(k * n, (k + 1) * n if k < num_subsets - 1 else batch_size) for k in range(num_subsets)]


def mixture_assignment(
  batch_size: int,
  num_subsets: int,
  mode: str = "slice",
  generator: torch.Generator | None = None,
  device: torch.device | str | None = None,
) -> torch.Tensor:
  """int64 [B]: the subset each row's z is drawn from."""
  if mode == "random":
    return torch.randint(0, num_subsets, (batch_size,), generator=generator, device=device)
  if mode != "slice":
    raise ValueError(f"mixture must be one of {MIXTURE_CHOICES}, got {mode!r}.")
  n = batch_size // num_subsets
  if n == 0:  # fewer rows than subsets: the last (full) set takes them all
    return torch.full((batch_size,), num_subsets - 1, dtype=torch.int64, device=device)
  return torch.clamp(torch.arange(batch_size, device=device) // n, max=num_subsets - 1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
  """Analytic KL(N(mu, exp(logvar)) || N(0, I)), summed over the last axis."""
  return -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


# ---------------------------------------------------------------------------------------------
# The model and its loss.


class TorchMoPoE(nn.Module):
  """Frontal + lateral image encoders/decoders (one network per view) and a text pair."""

  def __init__(self, cfg: TorchModelConfig):
    super().__init__()
    self.cfg = cfg
    self.encoders = nn.ModuleDict(
      {"frontal": ImageEncoder(cfg), "lateral": ImageEncoder(cfg), "text": TextEncoder(cfg)}
    )
    self.decoders = nn.ModuleDict(
      {"frontal": ImageDecoder(cfg), "lateral": ImageDecoder(cfg), "text": TextDecoder(cfg)}
    )
    mask = subset_mask(len(MODALITIES), cfg.variant)
    self.register_buffer("subset_mask", mask, persistent=False)
    self.register_buffer(
      "prior_flags", prior_expert_flags(mask, cfg.prior_expert), persistent=False
    )

  def encode(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> mus, logvars, each [M, B, D] in MODALITIES order."""
    outs = [self.encoders[m](batch[m]) for m in MODALITIES]
    return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

  def forward(
    self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
  ) -> dict[str, torch.Tensor]:
    mus, logvars = self.encode(batch)
    mu_k, logvar_k = product_of_experts(mus, logvars, self.subset_mask, self.prior_flags)
    batch_size = mus.shape[1]
    assign = mixture_assignment(batch_size, mu_k.shape[0], self.cfg.mixture, generator, mus.device)
    rows = torch.arange(batch_size, device=mus.device)
    mu_sel, logvar_sel = mu_k[assign, rows], logvar_k[assign, rows]  # [B, D]
    eps = torch.randn(mu_sel.shape, generator=generator, dtype=mu_sel.dtype, device=mu_sel.device)
    z = mu_sel + torch.exp(0.5 * logvar_sel) * eps
    recon = {m: self.decoders[m](z) for m in MODALITIES}
    return {"mu": mu_k, "logvar": logvar_k, "z": z, "assignment": assign, "recon": recon}

  def loss(
    self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
  ) -> tuple[torch.Tensor, dict]:
    cfg = self.cfg
    out = self(batch, generator)
    nll = {}
    log_norm = math.log(2.0 * cfg.image_scale)
    for m in ("frontal", "lateral"):
      err = torch.abs(batch[m] - out["recon"][m]) / cfg.image_scale + log_norm
      nll[m] = err.flatten(1).sum(1)
    token_nll = F.cross_entropy(out["recon"]["text"], batch["text"], reduction="none")  # [B, T]
    if cfg.mask_text_padding:
      token_nll = token_nll * (batch["text"] != cfg.pad_id).to(token_nll.dtype)
    nll["text"] = token_nll.sum(1)
    rec = sum(w * nll[m] for w, m in zip(cfg.rec_weights, MODALITIES))  # [B]
    kl = gaussian_kl(out["mu"], out["logvar"]).mean(0)  # mean over the K subsets -> [B]
    loss = (rec + cfg.beta * kl).mean()
    metrics = {"loss": loss.detach(), "rec": rec.mean().detach(), "kl": kl.mean().detach()}
    metrics.update({f"nll_{m}": v.mean().detach() for m, v in nll.items()})
    return loss, metrics


def make_optimizer(model: nn.Module, cfg: TorchModelConfig | None = None) -> torch.optim.Adam:
  cfg = cfg or getattr(model, "cfg", TorchModelConfig())
  return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, betas=cfg.adam_betas)


def make_train_step(
  model: TorchMoPoE, optimizer: torch.optim.Optimizer, autocast_dtype: torch.dtype | None = None
) -> Callable[[Mapping[str, torch.Tensor]], dict[str, float]]:
  """A step: forward, loss, backward, optimizer step (train mode: BN batch stats, dropout).

  With ``autocast_dtype`` (e.g. torch.bfloat16) the forward pass and the loss run under
  ``torch.autocast`` on the batch's device (bf16 needs no loss scaling); the parameters, their
  gradients and Adam stay float32.
  """

  def train_step(batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
    model.train()
    optimizer.zero_grad(set_to_none=True)
    if autocast_dtype is None:
      loss, metrics = model.loss(batch)
    else:
      with torch.autocast(batch["text"].device.type, dtype=autocast_dtype):
        loss, metrics = model.loss(batch)
    loss.backward()
    optimizer.step()
    return {k: float(v) for k, v in metrics.items()}

  return train_step


def random_batch(
  cfg: TorchModelConfig, batch_size: int, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
  """Frontal/lateral float32 [B, C, S, S] in [0, 1]; text int64 [B, T] in [0, V)."""
  shape = (batch_size, cfg.image_channels, cfg.image_size, cfg.image_size)
  return {
    "frontal": torch.rand(shape, generator=generator),
    "lateral": torch.rand(shape, generator=generator),
    "text": torch.randint(
      0, cfg.vocab_size, (batch_size, cfg.text_length), generator=generator, dtype=torch.int64
    ),
  }


def _count(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


def parameter_counts(cfg: TorchModelConfig | None = None) -> dict[str, int]:
  """Trainable parameters per network and in total (built on the meta device: no memory)."""
  cfg = cfg or TorchModelConfig()
  with torch.device("meta"):
    model = TorchMoPoE(cfg)
  counts = {f"{m}_encoder": _count(model.encoders[m]) for m in MODALITIES}
  counts.update({f"{m}_decoder": _count(model.decoders[m]) for m in MODALITIES})
  counts["total"] = _count(model)
  return counts


# ---------------------------------------------------------------------------------------------
# Timing by hand.


def time_train_steps(
  cfg: TorchModelConfig, batch_size: int, steps: int = 5, warmup: int = 3, seed: int = 0
) -> dict[str, list[float]]:
  """Seconds per training step (after ``warmup`` untimed steps: the first steps of oneDNN are
  slow) on one fixed random batch: ``wall`` (perf_counter) and ``cpu`` (process CPU time, all
  threads together; less sensitive to other processes on a shared machine)."""
  torch.manual_seed(seed)
  model = TorchMoPoE(cfg)
  step = make_train_step(model, make_optimizer(model, cfg))
  batch = random_batch(cfg, batch_size, torch.Generator().manual_seed(seed))
  for _ in range(warmup):
    step(batch)
  times = {"wall": [], "cpu": []}
  for _ in range(steps):
    wall, cpu = time.perf_counter(), time.process_time()
    step(batch)
    times["wall"].append(time.perf_counter() - wall)
    times["cpu"].append(time.process_time() - cpu)
  return times


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--tiny", action="store_true", help="tiny config instead of the paper's")
  args = parser.parse_args(argv)
  torch.set_num_threads(args.threads)
  cfg = tiny_config() if args.tiny else TorchModelConfig()
  print(
    f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
    f"parameters {parameter_counts(cfg)['total']:,}"
  )
  for batch_size in args.batch_sizes:
    times = time_train_steps(cfg, batch_size, args.steps, args.warmup)
    wall, cpu = times["wall"], times["cpu"]
    print(
      f"batch {batch_size}: median {statistics.median(wall):.3f} s/step wall "
      f"(min {min(wall):.3f}, max {max(wall):.3f}, {len(wall)} steps); "
      f"median {statistics.median(cpu):.3f} s/step process CPU time",
      flush=True,
    )


if __name__ == "__main__":
  main()
