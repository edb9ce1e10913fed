"""The generalized multimodal ELBO (MoPoE), per example, reduced in one place (SPEC §3–4).

For each example b with available modalities A_b and valid subsets V_b:
  1. reconstruction: sum_{m in A_b} rec_weight_m * -log p_m(x_m | z_b), with z_b drawn from the
     subset assigned to row b, and
       images: Laplace(loc = decoder output, scale), summed over pixels,
       text:   categorical over the vocabulary from LOGITS, summed over positions;
  2. KL term: sum_{k in V_b} (1 / |V_b|) * KL(q_k(z | x_k) || N(0, I));
  3. total = reconstruction + beta * KL term.
The batch loss is the mean of ``total`` over the rows that have a valid subset.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import optax

from mopoe_jax import fusion
from mopoe_jax.model import ModelOutput, is_text

PAD_ID = 1  # input_pipeline.text.PAD_ID


@flax.struct.dataclass
class LossTerms:
  nll: dict               # modality -> [B] negative log-likelihood (0 where unavailable)
  kl_per_subset: jax.Array  # [B, K] KL(q_k || N(0, I)) of every valid subset, else 0
  valid: jax.Array        # bool [B, K] subset valid for the example
  kl: jax.Array           # [B] mixture-weighted KL term
  rec: jax.Array          # [B] weighted reconstruction term
  total: jax.Array        # [B] rec + beta * kl
  weight: jax.Array       # [B] 1 for rows that count in the mean, else 0


def laplace_nll(x, loc, scale: float):
  """[B]: -log Laplace(x | loc, scale) summed over all but the batch axis."""
  nll = jnp.abs(x - loc) / scale + math.log(2.0 * scale)
  return nll.reshape(nll.shape[0], -1).sum(axis=-1)


def categorical_nll(tokens, logits, mask_padding: bool = False):
  """[B]: cross-entropy of int tokens [B, T] under logits [B, T, V], summed over positions."""
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)  # [B, T]
  if mask_padding:
    nll = jnp.where(tokens == PAD_ID, 0.0, nll)
  return nll.sum(axis=-1)


def loss_terms(out: ModelOutput, inputs: dict, available, *, modalities: Sequence[str],
               rec_weights: Sequence[float], beta: float, image_scale: float,
               mask_text_padding: bool = False) -> LossTerms:
  """Per-example terms of the objective; ``inputs`` as given to the model."""
  batch_size = out.z.shape[0]
  if available is None:
    available = jnp.ones((batch_size, len(modalities)), bool)
  nll, rec = {}, jnp.zeros((batch_size,), jnp.float32)
  for i, m in enumerate(modalities):
    if is_text(m):
      term = categorical_nll(inputs[m], out.outputs[m], mask_text_padding)
    else:
      term = laplace_nll(inputs[m].astype(jnp.float32), out.outputs[m], image_scale)
    term = jnp.where(available[:, i], term, 0.0)
    nll[m] = term
    rec = rec + rec_weights[i] * term
  weights = fusion.subset_weights(out.valid)  # [B, K]
  kl_per_subset = jnp.where(out.valid, fusion.gaussian_kl(out.mu_k, out.logvar_k).T, 0.0)
  kl = fusion.kl_divergence_terms(out.mu_k, out.logvar_k, weights)
  return LossTerms(nll=nll, kl_per_subset=kl_per_subset, valid=out.valid, kl=kl, rec=rec,
                   total=rec + beta * kl, weight=fusion.example_weights(out.valid))


def reduce_terms(terms: LossTerms, subset_names: Sequence[str], available=None):
  """The one place where per-example terms become the scalar loss and logged metrics.

  Returns (loss, metrics): loss is the weighted mean of ``total``; metrics hold the means of
  total, rec, kl, each modality's NLL (over examples that have it) and each subset's KL (over
  examples for which it is valid).
  """
  w = terms.weight
  count = jnp.maximum(w.sum(), 1.0)

  def mean(x, weight=w):
    return jnp.sum(weight * x) / jnp.maximum(weight.sum(), 1.0)

  loss = jnp.sum(w * terms.total) / count
  metrics = {"loss": loss, "rec": mean(terms.rec), "kl": mean(terms.kl)}
  for i, (m, term) in enumerate(terms.nll.items()):
    has = w if available is None else w * available[:, i].astype(w.dtype)
    metrics[f"nll/{m}"] = mean(term, has)
  for k, name in enumerate(subset_names):
    metrics[f"kl_subset/{name}"] = mean(terms.kl_per_subset[:, k],
                                        w * terms.valid[:, k].astype(w.dtype))
  return loss, metrics
