"""The multimodal VAE: one encoder and one decoder per modality around a shared latent.

``MoPoE.__call__`` runs the whole generative path of a training step: encode every modality,
fuse all subsets at once (:mod:`mopoe_jax.vae.fusion`), assign each row a subset, draw one
reparameterised z per row, and decode every modality from it. The objective lives in
:mod:`mopoe_jax.vae.objective`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mopoe_jax.data import modalities
from mopoe_jax.vae import fusion, layers, networks, subsets

CONV_IMPLS = ("auto",) + layers.CONV_IMPLS
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


is_text = modalities.is_text  # the registry decides a modality's kind


@flax.struct.dataclass
class ModelOutput:
  mu: jax.Array  # [M, B, D] unimodal posterior means
  logvar: jax.Array  # [M, B, D] unimodal posterior log-variances
  mu_k: jax.Array  # [K, B, D] subset posterior means
  logvar_k: jax.Array  # [K, B, D] subset posterior log-variances
  valid: jax.Array  # bool [B, K] subset valid for the example
  assignment: jax.Array  # int [B] subset each row's z was drawn from
  z: jax.Array  # [B, D]
  outputs: dict  # modality -> image Laplace location [B, S, S, 1] / text logits [B, T, V]


class MoPoE(nn.Module):
  """Encoders/decoders for ``modalities`` and the mixture of products of experts."""

  modalities: Sequence[str]
  subset_mask: Sequence[Sequence[bool]]  # [K, M] as nested tuples (hashable)
  latent_dim: int
  vocab_size: int
  image_encoder_widths: Sequence[int]
  image_decoder_widths: Sequence[int]
  text_encoder_widths: Sequence[int]
  text_decoder_widths: Sequence[int]
  dropout: float = 0.5
  prior_expert: str = "full_set"
  assignment: str = "slice"
  logvar_bound: float | None = None  # soft bound b * tanh(logvar / b); None = reference
  # The reference's nn.Embedding(padding_idx=0): this token id embeds to zeros and learns
  # nothing. Id 0 is <exc> (unknown word) in the reference's vocabulary, not <pad>.
  embedding_zero_id: int | None = 0
  dtype: jnp.dtype | None = None  # compute dtype; None: float32
  float32_text_logits: bool = True  # the text decoder's logits in float32 whatever ``dtype``
  conv_impl: str = "xla"  # "xla" | "cpu" (mopoe_jax.vae.layers); create_model resolves "auto"

  def setup(self):
    encoders, decoders = {}, {}
    shared = dict(dropout=self.dropout, dtype=self.dtype, conv_impl=self.conv_impl)
    for m in self.modalities:
      if is_text(m):
        encoders[m] = networks.TextEncoder(
          self.text_encoder_widths,
          self.latent_dim,
          self.vocab_size,
          padding_index=self.embedding_zero_id,
          **shared,
        )
        decoders[m] = networks.TextDecoder(
          self.text_decoder_widths,
          self.vocab_size,
          float32_logits=self.float32_text_logits,
          **shared,
        )
      else:
        encoders[m] = networks.ImageEncoder(self.image_encoder_widths, self.latent_dim, **shared)
        decoders[m] = networks.ImageDecoder(self.image_decoder_widths, **shared)
    self.encoders = encoders
    self.decoders = decoders

  @property
  def mask(self) -> np.ndarray:
    return np.asarray(self.subset_mask, dtype=bool)

  def encode(self, inputs: dict, train: bool, available=None):
    """Unimodal posteriors of every modality.

    Args:
      inputs: modality -> [B, S, S, 1] float images / [B, T] int tokens (zero-filled where
        missing).
      train: batch statistics and dropout (True) or running averages (False).
      available: bool [B, M] in the order of ``modalities``, or None (all present). In
        training, modality m's encoder takes its batch statistics over the rows of column m.
    Returns:
      (mu, logvar), each float32 [M, B, D].
    """
    mus, logvars = [], []
    for i, m in enumerate(self.modalities):
      present = None if available is None else jnp.asarray(available)[:, i]
      mu, logvar = self.encoders[m](inputs[m], train, present)
      logvar = logvar.astype(jnp.float32)
      if self.logvar_bound is not None:
        logvar = self.logvar_bound * jnp.tanh(logvar / self.logvar_bound)
      mus.append(mu.astype(jnp.float32))
      logvars.append(logvar)
    return jnp.stack(mus), jnp.stack(logvars)

  def decode(self, z, train: bool) -> dict:
    """z: [B, D] -> modality -> image location [B, S, S, 1] / text logits [B, T, V] (float32)."""
    return {m: self.decoders[m](z, train).astype(jnp.float32) for m in self.modalities}

  def posteriors(self, inputs: dict, available, train: bool):
    """Unimodal and subset posteriors: (mu, logvar [M, B, D], mu_k, logvar_k [K, B, D])."""
    mu, logvar = self.encode(inputs, train, available)
    mu_k, logvar_k = fusion.subset_posteriors(mu, logvar, self.mask, available, self.prior_expert)
    return mu, logvar, mu_k, logvar_k

  def __call__(self, inputs: dict, available, train: bool) -> ModelOutput:
    """The generative path of one step; draws from the 'sample' rng stream."""
    mu, logvar, mu_k, logvar_k = self.posteriors(inputs, available, train)
    batch_size = mu.shape[1]
    valid = fusion.valid_subsets(self.mask, available, batch_size)
    assign_rng, z_rng = jax.random.split(self.make_rng("sample"))
    assignment = fusion.assign_subsets(assign_rng, valid, self.assignment)
    z = fusion.sample_mixture(z_rng, mu_k, logvar_k, assignment)
    return ModelOutput(
      mu=mu,
      logvar=logvar,
      mu_k=mu_k,
      logvar_k=logvar_k,
      valid=valid,
      assignment=assignment,
      z=z,
      outputs=self.decode(z, train),
    )


def resolve_conv_impl(choice: str, platform: str | None = None) -> str:
  """``model.conv_impl`` -> "xla" | "cpu": "auto" is "cpu" for the CPU, else "xla".

  ``platform``: the platform the program is for ('cpu', 'cuda', 'rocm', 'tpu'); None: the
  backend this process runs (``jax.default_backend()``).
  """
  if choice not in CONV_IMPLS:
    raise ValueError(f"model.conv_impl must be one of {CONV_IMPLS}, got {choice!r}.")
  if choice == "auto":
    return "cpu" if (platform or jax.default_backend()) == "cpu" else "xla"
  return choice


def resolve_compute_dtype(choice: str, platform: str | None = None):
  """``model.compute_dtype`` -> jnp.bfloat16, or None for float32.

  "auto" is bfloat16 on accelerators (any platform but "cpu") and float32 on the CPU;
  ``platform`` as in `resolve_conv_impl`.
  """
  choices = ("auto", *COMPUTE_DTYPES)
  if choice not in choices:
    raise ValueError(f"model.compute_dtype must be one of {choices}, got {choice!r}.")
  if choice == "auto":
    choice = "float32" if (platform or jax.default_backend()) == "cpu" else "bfloat16"
  dtype = COMPUTE_DTYPES[choice]
  return None if dtype == jnp.float32 else dtype


def create_model(
  config: ml_collections.ConfigDict, vocab_size: int, platform: str | None = None
) -> MoPoE:
  """The model of a run's config (``data``: modalities and sizes; ``model``), after checking
  that the sizes fit together.

  The platform-dependent choices ``model.compute_dtype`` and ``model.conv_impl`` are resolved
  here ("auto" -> per ``platform``, the platform the programs are for: 'cpu', 'cuda', 'tpu';
  None: this process's backend), so the module holds concrete values.
  """
  c, d = config.model, config.data
  modalities, image_size, text_length = d.modalities, d.image_size, d.text_length
  if any(not is_text(m) for m in modalities):
    networks.check_image_geometry(image_size, c.image_encoder_widths, c.image_decoder_widths)
  if any(is_text(m) for m in modalities):
    networks.check_text_geometry(text_length, c.text_encoder_widths, c.text_decoder_widths)
  mask = subsets.variant_mask(c.variant, len(modalities))
  fusion.prior_flags(mask, c.prior_expert)  # validates the choice
  if c.assignment not in fusion.ASSIGNMENTS:
    raise ValueError(
      f"Unknown model.assignment {c.assignment!r}; choose one of {fusion.ASSIGNMENTS}."
    )
  return MoPoE(
    modalities=tuple(modalities),
    subset_mask=tuple(tuple(bool(v) for v in row) for row in mask),
    latent_dim=c.latent_dim,
    vocab_size=vocab_size,
    image_encoder_widths=tuple(c.image_encoder_widths),
    image_decoder_widths=tuple(c.image_decoder_widths),
    text_encoder_widths=tuple(c.text_encoder_widths),
    text_decoder_widths=tuple(c.text_decoder_widths),
    dropout=c.dropout,
    prior_expert=c.prior_expert,
    assignment=c.assignment,
    logvar_bound=c.logvar_bound,
    embedding_zero_id=c.embedding_zero_id,
    dtype=resolve_compute_dtype(c.compute_dtype, platform),
    float32_text_logits=bool(c.float32_text_logits),
    conv_impl=resolve_conv_impl(c.conv_impl, platform),
  )


# The order of a batch's `available` columns.
DATA_MODALITIES = modalities.MODALITIES


def inputs_from_batch(batch: dict, modalities: Sequence[str]):
  """A pipeline batch -> (inputs, available) for the model.

  Images go from uint8 [B, S, S, 1] to float32 in [0, 1] (on device, inside jit); text stays
  int32 [B, T]; ``available`` becomes bool [B, M] in the order of ``modalities``.
  """
  inputs = {}
  for m in modalities:
    x = batch[m]
    if not is_text(m):
      x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    inputs[m] = x
  columns = [DATA_MODALITIES.index(m) for m in modalities]
  available = jnp.asarray(batch["available"])[:, columns].astype(bool)
  return inputs, available


def dummy_batch(config: ml_collections.ConfigDict, batch_size: int) -> dict:
  """A pipeline batch of zeros with every modality available (shapes for init and compiling)."""
  s, t = config.data.image_size, config.data.text_length
  batch = {
    m: (
      np.zeros((batch_size, t), np.int32)
      if is_text(m)
      else np.zeros((batch_size, s, s, 1), np.uint8)
    )
    for m in DATA_MODALITIES
  }
  batch["available"] = np.ones((batch_size, len(DATA_MODALITIES)), bool)
  return batch


def init_variables(model: MoPoE, config: ml_collections.ConfigDict, rng) -> dict:
  """{'params', 'batch_stats'} of ``model``, initialised from ``rng`` (jit or eval_shape it)."""
  batch = dummy_batch(config, max(8, len(model.mask)))
  inputs, available = inputs_from_batch(batch, config.data.modalities)
  params_rng, sample_rng, dropout_rng = jax.random.split(rng, 3)
  return dict(
    model.init(
      {"params": params_rng, "sample": sample_rng, "dropout": dropout_rng}, inputs, available, False
    )
  )
