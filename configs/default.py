"""The paper's model on MIMIC-CXR, as the reference code trained it (Klug, Sutter, Vogt, MIDL 2021;
docs/model.md).

This is the reference's trained model wherever the reference is not a bug: no prior expert, a
constant learning rate, its "Finding" rule, its text padding behaviour. `DEVIATIONS` lists every
place where this config (or the code under it) still differs from the reference code, with the
reason; docs/deviations.md#deviations-from-the-reference-code shows the same rows (a test
compares them). configs/recommended.py is the variant this project recommends.

Prepare the dataset once (credentialed MIMIC-CXR-JPG + reports in MANUAL_DIR;
docs/training.md#mimic-cxr):
  python main.py --config=configs/default.py --workdir=runs/mimic \
      --config.data.manual_dir=MANUAL_DIR
Sizes: 128 px, 128 tokens, vocabulary from the data (about 2,900 words), latent 512,
59.2 M parameters, 4.5 GFLOP per example forward (XLA counts 105.9 GFLOP for a training step
of 8).
150 epochs of ~61.7k studies at batch 200 is ~46k steps, about 1.5e17 FLOP in all: hours on one
modern GPU or a TPU slice by that count (not measured yet), far too long on a CPU (the step runs
at ~4 examples/s on 2 CPU cores, docs/performance.md).
"""

import ml_collections
from ml_collections import config_dict

# Every deviation from the reference code's trained MIMIC model: (config field, or None where no
# field governs it; what the reference does; what this project does, starting with the field's
# value; why). Rendered as the table in docs/deviations.md.
DEVIATIONS = (
  (
    "train.warmup_steps",
    "0: learning rate 5e-4 from the first step; a diverged run is restarted, up to 10 times",
    "500: a linear learning-rate warm-up",
    "at 5e-4 the first steps can diverge (on random inputs the KL reached 1e14 to 1e31 within "
    "two steps, then NaN); the warm-up keeps them finite without restarts, and a non-finite "
    "step still stops the run with an error",
  ),
  (
    "eval.probes.repeats",
    "1 draw of 500 train studies per subset",
    "10 draws, shared by all subsets; mean ± std, a 95% t-interval, and the full set minus the "
    "best single modality paired over the draws",
    "the spread over draws (about 0.025 AP at the paper's sizes) is as large as the whole range "
    "of the paper's Table 1: one draw orders the subsets by chance",
  ),
  (
    None,
    "probe metric: average_precision_score(hard 0/1 predictions, labels), arguments swapped",
    "average_precision_score(labels, predicted probability); the reference's number beside it "
    "in probes.md, labelled LEGACY",
    "the swapped number is not an average precision of the probe (a probe that predicts no "
    "positive scores 0)",
  ),
  (
    None,
    "random row: a notebook's DummyClassifier(most_frequent) on the eval split, "
    "average_precision_score per shuffled batch, averaged (0.235 in the paper)",
    "the label's prevalence in the test split (per subset: among its scored test studies)",
    "the baseline of the table's own split and metric",
  ),
  (
    None,
    "a probe draw with one class for a label is redrawn (all labels at once)",
    "left out for that label and counted in probes.json",
    "a redraw makes the sample depend on its labels; at 500 studies it does not happen for Finding",
  ),
  (
    None,
    "text likelihood: log-softmax output passed as probabilities until early March 2021, "
    "passed as logits since",
    "logits",
    "the old form is not the categorical likelihood of the decoder; the reference's current "
    "code equals ours",
  ),
  (
    None,
    "each epoch ends with a partial batch (61,747 mod 200 = 147 studies) whose KL is still "
    "divided by the configured 200",
    "the partial batch is dropped (a different remainder each epoch); the KL is divided by the "
    "real number of studies, which in training is always the configured batch",
    "every step sees a full batch; no config field, since the two divisions give the same "
    "number on full batches",
  ),
  (
    None,
    "studies with an uncertain (-1) value of a label in use are dropped from every split (the "
    "three labels Lung Opacity, Pleural Effusion, Support Devices: train 61,747 -> 60,461; "
    "label Finding alone: none)",
    "kept",
    "labels play no part in training the VAE: dropping studies only removes data",
  ),
  (
    "model.compute_dtype",
    "float32 throughout",
    "auto: bfloat16 activations and matmuls on GPU/TPU, float32 on CPU; parameters, optimizer "
    "state, BatchNorm statistics, the text logits (model.float32_text_logits), the PoE/KL "
    "math and the loss stay float32",
    "the accelerators' matrix units are built for bfloat16; "
    "--config.model.compute_dtype=float32 is the reference's arithmetic (whether bfloat16 "
    "moves Table 1 has not been measured)",
  ),
  (
    None,
    "BatchNorm statistics over every study of the batch (it trains on complete studies only)",
    "each encoder's BatchNorm statistics and running averages over the studies that have its "
    "modality",
    "with missing modalities, zero-filled inputs would shift the statistics; on complete "
    "studies (this config) the two are the same",
  ),
  (
    None,
    "report words: NLTK's word_tokenize",
    "an equivalent regular-expression tokenizer",
    "NLTK's tokenizer model data cannot be downloaded here; the vocabulary may differ in a few "
    "rare words",
  ),
)


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.data = data = ml_collections.ConfigDict()
  data.name = "mimic_cxr/paper"  # tfds name/config; 'mimic_cxr/all_studies' adds
  data.data_dir = config_dict.placeholder(str)  # incomplete studies. None: tfds default dir.
  data.manual_dir = config_dict.placeholder(str)  # MIMIC-CXR-JPG + reports (credentialed).
  data.modalities = ("frontal", "lateral", "text")
  data.image_size = 128
  data.text_length = 128
  data.require_complete = True  # the paper trains on complete F+L+T studies only
  # "Finding" from the 13 pathologies: 'reference' = sum of the raw values > 0 (blank skipped, -1
  # counted: one positive plus one uncertain is negative), as the reference code;
  # 'any_positive' = any of them is 1.0, the paper's words. Targets are made from the 14 stored
  # labels, so either works on any prepared dataset.
  data.finding_rule = "reference"
  data.train_split = "train"
  data.eval_split = "validation"
  data.test_split = "test"
  # Training shuffle buffer of encoded studies; None: the whole shard of this process (a uniform
  # permutation every epoch; memory: the shard's encoded size).
  data.shuffle_buffer_size = config_dict.FieldReference(10_000, field_type=int)
  data.prefetch = 2  # batches prepared ahead of the step

  config.model = model = ml_collections.ConfigDict()
  model.latent_dim = 512
  model.image_encoder_widths = (64, 128, 192, 256, 320, 320)
  model.image_decoder_widths = (320, 256, 192, 128, 64, 64)
  model.text_encoder_widths = (128, 256, 384, 512, 512, 512, 640)
  model.text_decoder_widths = (640, 640, 640, 640, 512, 512, 128)
  model.dropout = 0.5
  model.variant = "mopoe"  # 'mopoe' | 'poe' | 'moe'
  model.prior_expert = "none"  # 'none' | 'full_set' | 'all'; the reference's MIMIC
  # model has none (the original MoPoE: 'full_set')
  model.assignment = "slice"  # 'slice' (reference) | 'random'
  model.logvar_bound = config_dict.placeholder(float)  # None: unbounded, as the reference
  model.embedding_zero_id = 0  # reference: nn.Embedding(padding_idx=0) zeroes id 0,
  # which is <exc> (unknown word), not <pad>
  # 'auto': bfloat16 on GPU/TPU, float32 on CPU; or 'float32' | 'bfloat16'. Parameters,
  # optimizer state, BatchNorm statistics, the PoE/KL math and the loss stay float32.
  model.compute_dtype = "auto"
  model.float32_text_logits = True  # the text logits (and so the softmax) in float32
  # whatever compute_dtype says
  # Convolutions, same parameters and sums either way: 'xla' (native; cuDNN/TPU), 'cpu' (the
  # rewrites XLA:CPU runs faster, mopoe_jax/vae/cpu_conv.py) or 'auto' (cpu on CPU, else xla).
  model.conv_impl = "auto"
  model.rec_weights = (1 / 3, 1 / 3, 1 / 3)
  model.beta = 1.0
  model.image_scale = 0.75  # Laplace scale of the image likelihood
  model.mask_text_padding = False  # reference: the text loss covers <pad> too

  config.train = train = ml_collections.ConfigDict()
  train.seed = 0
  train.batch_size = 200  # global batch, split over all devices
  # Set, it decides the global batch instead: per device x the devices of all processes.
  train.per_device_batch_size = config_dict.placeholder(int)
  train.num_epochs = 150.0
  train.num_steps = config_dict.placeholder(int)  # overrides num_epochs when set
  train.learning_rate = 5e-4
  train.b1 = 0.9
  train.b2 = 0.999
  train.warmup_steps = 500  # DEVIATION (reference 0, restarts a diverged run):
  # a linear warm-up keeps the first steps finite
  train.plateau_factor = 1.0  # learning-rate factor on a plateau of the eval loss;
  # 1.0: none, as the reference's VAE (constant rate)
  train.plateau_patience = 5  # evaluations without improvement before a drop
  train.plateau_min_scale = 1e-3
  train.log_every_steps = 100
  train.eval_every_steps = 310  # about one epoch of the paper's training set
  train.eval_batches = config_dict.placeholder(int)  # None: the whole eval split
  train.checkpoint_every_steps = 1000
  train.keep_checkpoints = 3  # plus the best by eval loss
  # Several processes (docs/training.md#training-on-several-hosts): 'auto' starts
  # jax.distributed when a field below is set or the environment names several processes
  # (SLURM, Open MPI, Cloud TPU, JAX_COORDINATOR_ADDRESS); true always; false never. A field
  # left None is found by JAX in the same environment.
  train.multihost = "auto"
  train.coordinator_address = config_dict.placeholder(str)  # 'host:port' of process 0
  train.num_processes = config_dict.placeholder(int)
  train.process_id = config_dict.placeholder(int)  # 0 .. num_processes - 1
  # Resume although the batch size, seed, number of processes or data selection changed (the
  # batches then differ from those of an uninterrupted run); otherwise such a resume is refused.
  train.allow_data_order_change = False
  train.profile_steps = 0  # > 0: a jax.profiler trace of that many steps from
  # the third of each start (<workdir>/plugins/profile)
  train.image_grid_studies = 8  # studies in the TensorBoard image grids (rounded up
  # to a multiple of the devices); 0: none
  train.compilation_cache = True  # JAX's persistent compilation cache: a resumed or
  # re-evaluated run does not compile the step again,
  # nor trace it (<dir>/lowered, compilation.StoredProgram)
  train.compilation_cache_dir = config_dict.placeholder(str)  # None: <workdir>/xla_cache
  # Split the large parameters and their Adam moments over the devices, each updating its own
  # slice (the same numbers bit for bit; less memory and memory traffic per device): 'auto' on
  # GPUs and TPUs, not on CPUs; true always (more than one device); false never.
  train.shard_optimizer = "auto"
  train.shard_optimizer_min_elements = 2**16  # smaller arrays stay whole on every device

  config.eval = ev = ml_collections.ConfigDict()
  ev.batch_size = 200
  ev.checkpoint_step = config_dict.placeholder(int)  # None: the newest that restores
  # Several hosts: process 0 evaluates and the others wait for it at most this long.
  ev.multihost_wait_seconds = 6 * 3600
  ev.seed = 0
  # The evaluators that run, in order (mopoe_jax/evaluation/registry.py): any of 'probes',
  # 'generation', 'coherence', 'likelihood'.
  ev.evaluators = ("probes", "generation", "coherence", "likelihood")
  # Each evaluator's own settings: config.eval.<its name> (the module of the same name in
  # mopoe_jax/evaluation/ says what they mean; a section left out runs with its defaults).
  ev.probes = probes = ml_collections.ConfigDict()  # latent linear probes: Table 1
  probes.train_examples = 500  # per draw, with replacement from the train split
  probes.repeats = 10  # DEVIATION (reference 1): draws shared by all subsets;
  # only the drawn studies are encoded
  probes.max_iter = 1000  # of each logistic regression (lbfgs)
  probes.min_test_examples = 20  # fewer valid test studies for a subset is an error
  ev.generation = generation = ml_collections.ConfigDict()  # grids and generated reports
  generation.studies = 8  # complete test studies shown, one column each
  generation.prior_samples = 16  # unconditional samples, z ~ N(0, I)
  generation.latent = "sample"  # 'sample' of q_subset or its 'mean'
  ev.coherence = coherence = ml_collections.ConfigDict()  # classifiers on generated modalities
  coherence.latent = "sample"  # generate from a 'sample' of q_subset or its 'mean'
  coherence.attributes = True  # score generated images against ground-truth
  # attributes where the dataset has them (synthetic)
  ev.likelihood = likelihood = ml_collections.ConfigDict()  # importance-sampled log p(x)
  likelihood.samples = 64  # samples of q_subset per study
  likelihood.examples = 256  # the first test studies
  likelihood.batch_size = 32  # studies per likelihood step (x samples x subsets)

  config.classifier = clf = ml_collections.ConfigDict()
  clf.image_widths = (32, 64, 128, 128, 128)  # conv widths, stride 2 each
  clf.text_embed = 64
  clf.text_widths = (128, 128, 128)
  clf.num_steps = 3000
  clf.batch_size = 128
  clf.learning_rate = 1e-3
  clf.seed = 0
  clf.attribute_weight = 1.0  # MSE of standardised attributes (synthetic data)
  clf.shuffle_buffer_size = 4096  # decoded studies
  clf.checkpoint_dir = config_dict.placeholder(str)  # None: <workdir>/classifiers; share one
  # directory across runs on the same dataset
  return config
