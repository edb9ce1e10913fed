"""mopoe-jax: the MoPoE-VAE (generalized multimodal ELBO) for chest X-ray studies in JAX/Flax.

Stable public names:
  subset_mask(num_modalities) -> bool [K, M]
  subset_posteriors(mu, logvar, mask, available=None, prior_expert="full_set") -> (mu_k, logvar_k)
  mixture_assignment(batch_size, num_subsets) -> int [B]
  kl_divergence_terms(mu_k, logvar_k, weights) -> [B]
"""

from mopoe_jax.fusion import kl_divergence_terms, mixture_assignment, subset_posteriors
from mopoe_jax.subsets import subset_mask, subset_names, variant_mask

__all__ = [
    "kl_divergence_terms", "mixture_assignment", "subset_mask", "subset_names",
    "subset_posteriors", "variant_mask",
]
__version__ = "0.1.0"
