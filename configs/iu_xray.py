"""The paper's model (configs/default.py) on the Indiana University chest X-ray collection
(Open-i): real radiographs without credentials (docs/iu_xray.md).

Put the collection's two archives and a projections table in MANUAL_DIR (docs/iu_xray.md says
which files and where from), then
  python main.py --config=configs/iu_xray.py --workdir=runs/iu_xray \
      --config.data.manual_dir=MANUAL_DIR
prepares `iu_xray/paper` once, trains and evaluates.

Sizes: the model, the selection rule (frontal + lateral + non-empty FINDINGS), 128 px and 128
tokens are the paper's; the collection is ~20x smaller than MIMIC-CXR: 2,083 / 304 / 556
studies under the selection (3,955 reports; docs/iu_xray.md), a vocabulary of 631 words. So the
batch is 64 and training runs 100 epochs, 3,254 steps or 208k studies seen (the paper: 46k
steps, 9.3M studies). Expected time, from this project's measurements of the paper's model
(docs/performance.md; not measured on this collection, whose images cannot be downloaded where
the project is built): on 2 CPU cores at ~4 studies/s (Intel Xeon), about 15 hours of training plus
hours of evaluation (the coherence classifiers), too long for a CPU; on one current GPU, by the
step's roofline counts, minutes of training and the whole run well under an hour (not measured yet).
Preparing the dataset reads the PNG archive once, front to back: 20 s on 2 cores for an
archive of the real file names and 1.6 GB of made-up pixels.

The labels of Table 1 are derived from the reports' MeSH terms (input_pipeline/iu_xray/
mesh_labels.py), not MIMIC-CXR's CheXpert labels: its numbers are not comparable with the
paper's. Training on incomplete studies as well:
`--config.data.name=iu_xray/all_studies --config.data.require_complete=false`.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.name = "iu_xray/paper"
  train = config.train
  train.batch_size = 64
  train.num_epochs = 100.0
  train.warmup_steps = 200
  train.log_every_steps = 50
  train.eval_every_steps = 165  # about five epochs
  train.checkpoint_every_steps = 500
  config.classifier.num_steps = 1500  # the coherence classifiers see ~90 epochs
  return config
