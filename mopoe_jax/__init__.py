"""mopoe-jax: the MoPoE-VAE (generalized multimodal ELBO) for chest X-ray studies in JAX/Flax.

Stable public names (importable without TensorFlow; with `mopoe_jax.inference`):
  subset_mask(num_modalities) -> bool [K, M]: the canonical order (by size, then combination
    order: F, L, T, FL, FT, LT, FLT)
  subset_names(modalities, mask) -> list[str]: "frontal+text" and so on, in the mask's order
  variant_mask(variant, num_modalities) -> bool [K, M]: the subsets of 'mopoe', 'poe' or 'moe'
  subset_posteriors(mu, logvar, mask, available=None, prior_expert="full_set")
    -> (mu_k, logvar_k): mu, logvar [M, B, D]; mask [K, M]; available [B, M] or None; [K, B, D]
  mixture_assignment(batch_size, num_subsets) -> int [B]: the reference's deterministic
    slicing (B = 200, K = 7: 28 rows per subset, 32 for the full set)
  kl_divergence_terms(mu_k, logvar_k, weights) -> [B]: sum_k weights[b, k] KL(q_k || N(0, I)),
    summed over latent dimensions

The package is grouped in wings, each a sub-package whose docstring says what lives there and
what it may import (checked in CI by the import-linter contracts in setup.cfg), from the bottom:
  platform    paths, XLA flags and caches, compiled programs, the device mesh, speed figures
  data        the modality registry, the data-source contract, labels, text/image/report formats
  vae         subsets, fusion, layers, networks, the MoPoE module, the objective, latents
  training    the train step, the loop, its programs, checkpoints, model.json
  evaluation  the evaluators (Table 1's probes, generation, coherence, likelihood)
  inference   a trained model from its workdir alone (above training, beside evaluation)
The old flat module paths (``mopoe_jax.train`` and so on) still import, with a FutureWarning
naming the new one (`mopoe_jax._moved`).
"""

from mopoe_jax import _moved
from mopoe_jax.vae.fusion import kl_divergence_terms, mixture_assignment, subset_posteriors
from mopoe_jax.vae.subsets import subset_mask, subset_names, variant_mask

_moved.install()

__all__ = [
  "kl_divergence_terms",
  "mixture_assignment",
  "subset_mask",
  "subset_names",
  "subset_posteriors",
  "variant_mask",
]
__version__ = "0.1.0"
