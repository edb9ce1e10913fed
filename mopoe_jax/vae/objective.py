"""The generalized multimodal ELBO (MoPoE), per example, reduced in one place.

The objective: docs/model.md#the-generalized-multimodal-elbo, equations (3) and (6).

For each example b with available modalities A_b and valid subsets V_b:
  1. reconstruction: sum_{m in A_b} rec_weight_m * -log p_m(x_m | z_b), with z_b drawn from the
     subset assigned to row b, and
       images: Laplace(loc = decoder output, scale), summed over pixels,
       text:   categorical over the vocabulary from LOGITS, summed over positions;
  2. KL term: sum_{k in V_b} (1 / |V_b|) * KL(q_k(z | x_k) || N(0, I));
  3. total = reconstruction + beta * KL term.
The batch loss is the mean of ``total`` over the rows that have a valid subset: `sums` and
`means` are the one reduction, used by the train step, the eval loss and the metrics alike.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import optax

from mopoe_jax.vae import fusion
from mopoe_jax.vae.model import ModelOutput, is_text


@flax.struct.dataclass
class LossTerms:
  nll: dict  # modality -> [B] negative log-likelihood (0 where unavailable)
  kl_per_subset: jax.Array  # [B, K] KL(q_k || N(0, I)) of every valid subset, else 0
  valid: jax.Array  # bool [B, K] subset valid for the example
  kl: jax.Array  # [B] mixture-weighted KL term
  rec: jax.Array  # [B] weighted reconstruction term
  total: jax.Array  # [B] rec + beta * kl
  weight: jax.Array  # [B] 1 for rows that count in the mean, else 0


def laplace_nll(x, loc, scale: float):
  """[B]: -log Laplace(x | loc, scale) summed over all but the batch axis."""
  nll = jnp.abs(x - loc) / scale + math.log(2.0 * scale)
  return nll.reshape(nll.shape[0], -1).sum(axis=-1)


def categorical_nll(tokens, logits, pad_id: int | None = None):
  """[B]: cross-entropy of int tokens [B, T] under logits [B, T, V], summed over positions.

  With ``pad_id``, positions holding that token add nothing (masked padding).
  """
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)  # [B, T]
  if pad_id is not None:
    nll = jnp.where(tokens == pad_id, 0.0, nll)
  return nll.sum(axis=-1)


def modality_nll(modality: str, x, output, *, image_scale: float, text_pad_id: int | None = None):
  """[B]: -log p(x_m | z) of one modality given its decoder output.

  Images: Laplace(loc = output, ``image_scale``) over pixel values (x as float in [0, 1]);
  text: categorical from the logits, positions of ``text_pad_id`` left out when it is given.
  Leading dimensions beyond the batch are not allowed; flatten them first.
  """
  if is_text(modality):
    return categorical_nll(x, output, text_pad_id)
  return laplace_nll(x.astype(jnp.float32), output, image_scale)


def loss_terms(
  out: ModelOutput,
  inputs: dict,
  available,
  *,
  modalities: Sequence[str],
  rec_weights: Sequence[float],
  beta: float,
  image_scale: float,
  text_pad_id: int | None = None,
) -> LossTerms:
  """Per-example terms of the objective; ``inputs`` as given to the model.

  ``text_pad_id``: the token id left out of the text likelihood (None: every position counts,
  as in the reference).
  """
  batch_size = out.z.shape[0]
  if available is None:
    available = jnp.ones((batch_size, len(modalities)), bool)
  nll, rec = {}, jnp.zeros((batch_size,), jnp.float32)
  for i, m in enumerate(modalities):
    term = modality_nll(
      m, inputs[m], out.outputs[m], image_scale=image_scale, text_pad_id=text_pad_id
    )
    term = jnp.where(available[:, i], term, 0.0)
    nll[m] = term
    rec = rec + rec_weights[i] * term
  kl_per_subset = jnp.where(out.valid, fusion.gaussian_kl(out.mu_k, out.logvar_k).T, 0.0)
  kl = fusion.kl_divergence_terms(out.mu_k, out.logvar_k, fusion.subset_weights(out.valid))
  return LossTerms(
    nll=nll,
    kl_per_subset=kl_per_subset,
    valid=out.valid,
    kl=kl,
    rec=rec,
    total=rec + beta * kl,
    weight=fusion.example_weights(out.valid),
  )


def _count_key(key: str) -> str:
  return f"count/{key}" if "/" in key else "count"


def sums(terms: LossTerms, subset_names: Sequence[str], available=None, row_weight=None) -> dict:
  """Sums over the batch of every logged quantity, with the row counts they are means over.

  Rows count where ``terms.weight`` (a valid subset exists) and ``row_weight`` (e.g. not an
  eval padding row) are both nonzero. Keys: loss (of ``total``), rec, kl, count; nll/<modality>
  with count/nll/<modality> (rows that have the modality); kl_subset/<subset> with
  count/kl_subset/<subset> (rows for which the subset is valid). Sums of several batches add up;
  `means` turns them into the logged means.
  """
  w = terms.weight if row_weight is None else terms.weight * row_weight.astype(jnp.float32)
  out = {
    "loss": jnp.sum(w * terms.total),
    "rec": jnp.sum(w * terms.rec),
    "kl": jnp.sum(w * terms.kl),
    "count": jnp.sum(w),
  }
  for i, (m, term) in enumerate(terms.nll.items()):
    has = w if available is None else w * available[:, i].astype(w.dtype)
    out[f"nll/{m}"], out[f"count/nll/{m}"] = jnp.sum(has * term), jnp.sum(has)
  for k, name in enumerate(subset_names):
    has = w * terms.valid[:, k].astype(w.dtype)
    out[f"kl_subset/{name}"] = jnp.sum(has * terms.kl_per_subset[:, k])
    out[f"count/kl_subset/{name}"] = jnp.sum(has)
  return out


def means(totals: dict) -> dict:
  """The logged means of `sums` (possibly added over batches): each sum over its row count."""
  return {
    k: v / jnp.maximum(totals[_count_key(k)], 1.0)
    for k, v in totals.items()
    if not k.startswith("count")
  }


def reduce_terms(terms: LossTerms, subset_names: Sequence[str], available=None):
  """The one place where per-example terms become the scalar loss and logged metrics.

  Returns (loss, metrics): loss is the weighted mean of ``total``; metrics hold the means of
  total, rec, kl, each modality's NLL (over examples that have it) and each subset's KL (over
  examples for which it is valid).
  """
  metrics = means(sums(terms, subset_names, available))
  return metrics["loss"], metrics
