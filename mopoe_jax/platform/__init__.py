"""The platform wing: what every other wing runs on, and nothing about the model.

Paths that may be ``gs://`` URIs (`paths`), XLA flags, the persistent compilation cache and
``jax.distributed`` start-up (`runtime`), compiled programs kept once per process and traced
programs stored on disk (`compilation`), the ``('data',)`` device mesh and global batches
(`sharding`), the log's speed figures and profiles (`speed`).

May import: JAX, etils and the standard library only; no other wing of `mopoe_jax`
(the import-linter contracts in setup.cfg check this in CI).
"""
