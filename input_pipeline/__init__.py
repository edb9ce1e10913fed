"""Input pipeline: the tfds builders (one folder each, found by `builders`), tf.data batching,
the prepared dataset as a `mopoe_jax.data.datasource.DataSource` (`tfds_source`)."""
