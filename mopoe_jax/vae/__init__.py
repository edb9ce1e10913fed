"""The model wing: the MoPoE-VAE's mathematics and networks, pure functions and Flax modules.

The K x M subset mask (`subsets`), products of experts for all subsets at once, the mixture
assignment and KL (`fusion`), the layers with PyTorch semantics and the XLA:CPU convolution
rewrites (`layers`, `cpu_conv`), encoders and decoders (`networks`), the `MoPoE` module
(`model`), the ELBO terms (`objective`), and what a trained model computes from it: subset
posteriors and decoded latents (`latents`).

May import: `mopoe_jax.data`, `mopoe_jax.platform`.
"""
