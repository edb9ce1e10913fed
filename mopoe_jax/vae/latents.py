"""What a trained model computes from its latent space: subset posteriors and decoded latents.

Shared by the evaluators (`mopoe_jax.evaluation`) and the trained-model API
(`mopoe_jax.inference`), so that neither depends on the other.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mopoe_jax.data import modalities
from mopoe_jax.vae import fusion
from mopoe_jax.vae.model import MoPoE, inputs_from_batch

# How z is taken from a posterior for generation: a draw, or the mean.
LATENTS = ("sample", "mean")


def check_latent(latent: str, field: str = "latent") -> None:
  if latent not in LATENTS:
    raise ValueError(f"{field} must be one of {LATENTS}, got {latent!r}.")


def as_generated(modality: str, output):
  """Decoder output -> what is shown/classified: images clipped to [0, 1], text argmax ids."""
  if modalities.is_text(modality):
    return jnp.argmax(output, axis=-1).astype(jnp.int32)  # [B, T]
  return jnp.clip(output, 0.0, 1.0)  # [B, S, S, 1]


@functools.partial(jax.jit, static_argnums=0)
def posteriors(model: MoPoE, variables, batch: dict):
  """batch: modalities + 'available' -> (mu_k, logvar_k [K, B, D], valid bool [B, K])."""
  inputs, available = inputs_from_batch(batch, model.modalities)
  _, _, mu_k, logvar_k = model.apply(variables, inputs, available, False, method=model.posteriors)
  return mu_k, logvar_k, fusion.valid_subsets(model.mask, available, available.shape[0])


@functools.partial(jax.jit, static_argnums=0)
def decode_latents(model: MoPoE, variables, z):
  """z [B, D] -> modality -> generated [B, ...] (see `as_generated`)."""
  out = model.apply(variables, z, False, method=model.decode)
  return {m: as_generated(m, x) for m, x in out.items()}
