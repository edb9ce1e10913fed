"""A tiny configuration for tests and smoke runs (seconds on a CPU).

  python main.py --config=configs/tiny.py --workdir=/tmp/mopoe_tiny

Uses `synthetic_cxr/tiny` (32 px, 32 tokens, a few hundred studies) and minimal widths.
"""

import ml_collections

from configs import synthetic


def get_config() -> ml_collections.ConfigDict:
  config = synthetic.get_config()
  config.data.name = "synthetic_cxr/tiny"
  config.data.image_size = 32
  config.data.text_length = 32
  model = config.model
  model.latent_dim = 16
  model.image_encoder_widths = (8, 16, 16, 16)
  model.image_decoder_widths = (16, 16, 16, 8)
  model.text_encoder_widths = (16, 16, 16, 16, 16)
  model.text_decoder_widths = (16, 16, 16, 16, 16)
  model.dropout = 0.0
  train = config.train
  train.batch_size = 32
  train.num_epochs = 1.0
  train.num_steps = 40
  train.warmup_steps = 5
  train.log_every_steps = 10
  train.eval_every_steps = 20
  train.eval_batches = 1
  train.checkpoint_every_steps = 20
  train.image_grid_studies = 4
  ev = config.eval
  ev.batch_size = 64
  ev.probes.train_examples = 100
  ev.probes.repeats = 3
  ev.generation.studies = 4
  ev.generation.prior_samples = 4
  ev.likelihood.samples = 8
  ev.likelihood.examples = 32
  clf = config.classifier
  clf.image_widths = (8, 16, 16)
  clf.text_embed = 16
  clf.text_widths = (16, 16)
  clf.num_steps = 30
  clf.batch_size = 32
  return config
