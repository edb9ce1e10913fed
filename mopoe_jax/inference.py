"""Use a trained model: embed studies, generate a missing view or report, from a workdir alone.

  from mopoe_jax import inference
  model = inference.TrainedModel.load("runs/synthetic")        # newest step that restores
  studies, failures = inference.read_studies("my_studies", model.image_size)
  latents = model.encode(studies)                               # posterior of what each has
  outputs = model.generate(studies, targets=("lateral", "text"), num_samples=2, seed=0)

Needs no dataset and no TensorFlow: the workdir's ``model.json`` (`mopoe_jax.training.model_file`)
holds the config, the vocabulary and the preprocessing, its ``checkpoints/`` the parameters.
A study is any non-empty subset of a frontal view, a lateral view and a report; images are
read as the dataset builders read them (`mopoe_jax.data.images.load_image`), reports through the
same section parsing and tokenizer (`mopoe_jax.data.report_text`, `mopoe_jax.data.text`).

Everything runs in fixed-size batches of jitted programs on the device JAX has (one compile per
program and batch size); results do not depend on the batch size, and a seed fixes every
sample (study i's noise is drawn from ``fold_in(key(seed), i)``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Iterable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from mopoe_jax.data import images as images_lib
from mopoe_jax.data import modalities, visualize
from mopoe_jax.data import report_text as reports_lib
from mopoe_jax.data import text as text_lib
from mopoe_jax.data.modalities import MODALITIES, is_text
from mopoe_jax.training import model_file, restore
from mopoe_jax.vae import subsets as subsets_lib
from mopoe_jax.vae.latents import check_latent, decode_latents, posteriors

# A study folder's files per modality come from the registry (`mopoe_jax.data.modalities`).
IMAGE_MODALITIES = modalities.IMAGE_MODALITIES
REPORT_FILE = "report.txt"
MAX_REPORT_BYTES = 1_000_000


class StudyError(ValueError):
  """A study that cannot be used; the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Study:
  """One study's inputs, preprocessed: images uint8 [S, S, 1], the report's text as read."""

  name: str
  frontal: np.ndarray | None = None
  lateral: np.ndarray | None = None
  report: str | None = None

  @property
  def present(self) -> tuple[str, ...]:
    """The modalities this study has, in the order of `MODALITIES`."""
    return tuple(m for m in MODALITIES if self.get(m) is not None)

  def get(self, modality: str):
    """The study's input of ``modality``: an image uint8 [S, S, 1], the report text, or None."""
    return self.report if modalities.is_text(modality) else getattr(self, modality)


# ------------------------------------------------------------------------------------------------
# Reading a user's files.


def read_image(path: str, image_size: int) -> np.ndarray:
  """A frontal or lateral view as the dataset builders store it: uint8 [S, S, 1]."""
  try:
    return images_lib.load_image(path, image_size)
  except images_lib.ImageTooLarge as e:
    raise StudyError(f"{path}: too large to decode safely: {e}") from e
  except FileNotFoundError as e:
    raise StudyError(f"{path}: no such file") from e
  except images_lib.IMAGE_ERRORS as e:
    why = str(e).split(" <_io.")[0]  # PIL appends the file object's repr
    raise StudyError(f"{path}: not a readable image ({type(e).__name__}: {why})") from e


def read_report(path: str) -> str:
  """The text a model reads of a report file (`reports.user_report_text`)."""
  try:
    with open(path, "rb") as f:
      raw = f.read(MAX_REPORT_BYTES + 1)
  except OSError as e:
    raise StudyError(f"{path}: cannot be read ({e})") from e
  if len(raw) > MAX_REPORT_BYTES:
    raise StudyError(f"{path}: more than {MAX_REPORT_BYTES:,} bytes; a report is plain text")
  if b"\x00" in raw:
    raise StudyError(f"{path}: a binary file, not a plain-text report")
  try:
    report = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise StudyError(f"{path}: not UTF-8 text ({e})") from e
  try:
    text = reports_lib.user_report_text(report)
  except ValueError as e:  # an XML report that does not parse
    raise StudyError(f"{path}: {e}") from e
  if not text_lib.tokenize(text):
    has_sections = report.lstrip().startswith("<") or reports_lib.split_sections(report)
    why = "it has sections but no FINDINGS or IMPRESSION text" if has_sections else "it is empty"
    raise StudyError(f"{path}: no report words ({why})")
  return text


def _one_file(directory: str, names: dict[str, str], stem: str, suffixes) -> str | None:
  found = [names[f"{stem}{s}"] for s in suffixes if f"{stem}{s}" in names]
  if len(found) > 1:
    raise StudyError(f"{directory}: more than one {stem} file ({', '.join(sorted(found))})")
  return os.path.join(directory, found[0]) if found else None


def read_study(directory: str, image_size: int) -> Study:
  """A study folder: ``frontal.png`` (or .jpg/.jpeg), ``lateral.png``, ``report.txt`` (or an
  Open-i ``report.xml``), any non-empty subset of them (file names in any case; other files are
  ignored)."""
  if not os.path.isdir(directory):
    raise StudyError(f"{directory}: not a folder")
  names = {n.lower(): n for n in os.listdir(directory)}
  found = {}
  for modality in modalities.REGISTRY:
    for stem in modality.file_stems:
      path = _one_file(directory, names, stem, modality.file_suffixes)
      if path:
        found[modality.name] = path
        break
  if not found:
    files = [f"{m.file_stems[0]}{'/'.join(m.file_suffixes[:2])}" for m in modalities.REGISTRY]
    expected = ", ".join(files[:-1]) + " or " + files[-1]
    raise StudyError(f"{directory}: no modality: expected {expected}")
  inputs = {
    ("report" if modalities.is_text(m) else m): (
      read_report(p) if modalities.is_text(m) else read_image(p, image_size)
    )
    for m, p in found.items()
  }
  return Study(name=os.path.basename(os.path.normpath(directory)), **inputs)


def read_studies(
  folder: str, image_size: int, progress: bool = False
) -> tuple[list[Study], list[tuple[str, str]]]:
  """Every study folder directly under ``folder`` (sorted by name): (the studies that could be
  read, [(folder name, why not)] for the others)."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder}: no such folder of studies")
  names = sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)))
  if not names:
    raise ValueError(
      f"{folder} has no study folders (one folder per study, holding "
      f"frontal.png, lateral.png and/or {REPORT_FILE})"
    )
  studies, failures = [], []
  for name in _progress(names, "reading studies", progress):
    try:
      studies.append(read_study(os.path.join(folder, name), image_size))
    except StudyError as e:
      logging.warning("Skipping study %s: %s", name, e)
      failures.append((name, str(e)))
  return studies, failures


def _progress(items, desc: str, enabled: bool, unit: str = "study"):
  if not enabled:
    return items
  import tqdm  # pylint: disable=g-import-not-at-top

  return tqdm.tqdm(items, desc=desc, unit=unit)


# ------------------------------------------------------------------------------------------------
# The model.


@functools.partial(jax.jit, static_argnums=0)
def _selected_posteriors(model, variables, batch, subset_index):
  """(mu, logvar) [B, D] of each row's subset ``subset_index`` [B]."""
  mu_k, logvar_k, _ = posteriors(model, variables, batch)
  rows = jnp.arange(subset_index.shape[0])
  return mu_k[subset_index, rows], logvar_k[subset_index, rows]


@functools.partial(jax.jit, static_argnums=(3, 4))
def _latents(mu, logvar, keys, num_samples: int, latent: str):
  """z [N, n, D]: the mean, or n draws from N(mu, exp(logvar)) with each row's key."""
  if latent == "mean":
    return mu[:, None]
  eps = jax.vmap(lambda k: jax.random.normal(k, (num_samples, mu.shape[-1])))(keys)
  return mu[:, None] + jnp.exp(0.5 * logvar)[:, None] * eps


class TrainedModel:
  """A restored model with its config, vocabulary and preprocessing (`load`)."""

  def __init__(
    self,
    model,
    variables,
    config,
    vocabulary: text_lib.Vocabulary,
    step: int,
    workdir: str,
    batch_size: int = 64,
  ):
    self.model, self.variables, self.config = model, variables, config
    self.vocabulary, self.step, self.workdir = vocabulary, step, workdir
    self.batch_size = batch_size
    self.image_size = int(config.data.image_size)
    self.text_length = int(config.data.text_length)
    self.modalities = tuple(model.modalities)
    self.subset_names = subsets_lib.subset_names(self.modalities, model.mask)

  @classmethod
  def load(cls, workdir: str, step: int | None = None, batch_size: int = 64) -> "TrainedModel":
    """The model of ``workdir``: its newest checkpoint that restores (damaged newer steps are
    skipped, as in training), or ``step``."""
    config, words, content = model_file.read(workdir)
    vocabulary = text_lib.Vocabulary(words)
    step, model, variables = restore.restore_model(
      config, workdir, dataset=content["dataset"], vocab_size=len(vocabulary), step=step
    )
    return cls(model, variables, config, vocabulary, step, workdir, batch_size)

  # -- inputs --------------------------------------------------------------------------------

  def _usable(self, study: Study) -> tuple[str, ...]:
    present = tuple(m for m in study.present if m in self.modalities)
    if not present:
      raise StudyError(
        f"study {study.name}: none of its modalities {study.present} is one of "
        f"the model's {self.modalities}"
      )
    return present

  def _subset_of(self, study: Study, wanted: Sequence[str] | str | None) -> int:
    """Index of the subset ``wanted`` (names or "a+b"; None: all the study's usable ones)."""
    present = self._usable(study)
    if wanted is None:
      wanted = present
    elif isinstance(wanted, str):
      wanted = tuple(wanted.split("+"))
    unknown = [m for m in wanted if m not in self.modalities]
    if unknown or not wanted:
      raise ValueError(f"subset {wanted!r}: each modality must be one of {self.modalities}")
    missing = [m for m in wanted if m not in present]
    if missing:
      raise StudyError(
        f"study {study.name} has no {', '.join(missing)} for the subset {'+'.join(wanted)}"
      )
    name = "+".join(m for m in self.modalities if m in wanted)
    if name not in self.subset_names:
      raise ValueError(
        f"subset {name!r} is not one of the model's ({self.subset_names}; "
        f"variant {self.config.model.variant!r})"
      )
    return self.subset_names.index(name)

  def batch(self, studies: Sequence[Study]) -> dict[str, np.ndarray]:
    """The pipeline batch of ``studies`` (zeros and <pad> where a modality is missing)."""
    n, s = len(studies), self.image_size
    out = {
      "frontal": np.zeros((n, s, s, 1), np.uint8),
      "lateral": np.zeros((n, s, s, 1), np.uint8),
      "text": np.full((n, self.text_length), text_lib.PAD_ID, np.int32),
      "available": np.zeros((n, len(MODALITIES)), bool),
    }
    for i, study in enumerate(studies):
      for m in self._usable(study):
        if is_text(m):
          out["text"][i] = self.vocabulary.encode(study.report, self.text_length)
        else:
          image = getattr(study, m)
          if image.shape != (s, s, 1):
            raise StudyError(
              f"study {study.name}: {m} has shape {image.shape}, the model "
              f"reads ({s}, {s}, 1) (read it with read_image)"
            )
          out[m][i] = image
        out["available"][i, MODALITIES.index(m)] = True
    return out

  def _chunks(self, n: int) -> Iterable[slice]:
    for first in range(0, n, self.batch_size):
      yield slice(first, min(first + self.batch_size, n))

  def _padded(self, array: np.ndarray) -> np.ndarray:
    pad = self.batch_size - array.shape[0]
    return np.pad(array, [(0, pad)] + [(0, 0)] * (array.ndim - 1)) if pad else array

  # -- encoding ------------------------------------------------------------------------------

  def encode(
    self,
    studies: Sequence[Study],
    subset: Sequence[str] | str | None = None,
    progress: bool = False,
  ) -> dict:
    """Each study's posterior of ``subset`` (e.g. "frontal+text"; None: of all its modalities).

    Returns {"mu": float32 [N, D], "logvar": float32 [N, D], "subset": [N] subset names}.
    """
    index = np.asarray([self._subset_of(st, subset) for st in studies], np.int32)
    if not len(studies):
      empty = np.zeros((0, self.model.latent_dim), np.float32)
      return {"mu": empty, "logvar": empty, "subset": []}
    mus, logvars = [], []
    for rows in _progress(list(self._chunks(len(studies))), "encoding", progress, "batch"):
      batch = {k: self._padded(v) for k, v in self.batch(studies[rows]).items()}
      mu, logvar = _selected_posteriors(
        self.model, self.variables, batch, self._padded(index[rows])
      )
      count = rows.stop - rows.start
      mus.append(np.asarray(mu)[:count])
      logvars.append(np.asarray(logvar)[:count])
    return {
      "mu": np.concatenate(mus),
      "logvar": np.concatenate(logvars),
      "subset": [self.subset_names[i] for i in index],
    }

  # -- generation ----------------------------------------------------------------------------

  def _decode(self, z: np.ndarray) -> dict[str, np.ndarray]:
    """z [N, D] -> modality -> generated [N, ...] (images in [0, 1], report ids)."""
    outs = []
    for rows in self._chunks(z.shape[0]):
      out = jax.device_get(decode_latents(self.model, self.variables, self._padded(z[rows])))
      outs.append({m: v[: rows.stop - rows.start] for m, v in out.items()})
    return {m: np.concatenate([o[m] for o in outs]) for m in self.modalities}

  def generate(
    self,
    studies: Sequence[Study],
    given: Sequence[str] | str | None = None,
    targets: Sequence[str] | None = None,
    num_samples: int = 1,
    seed: int = 0,
    latent: str = "sample",
    progress: bool = False,
  ) -> list[dict]:
    """Every target modality decoded from each study's posterior of ``given``.

    Args:
      studies: what `read_studies` returns, or `Study` objects made by hand.
      given: the subset to condition on ("frontal", ("lateral", "text"), ...); None: all of
        each study's modalities.
      targets: the modalities to generate (default: all of the model's).
      num_samples: draws of z per study ('sample'); 'mean' decodes the posterior mean once.
      seed: fixes every draw.
      latent: 'sample' or 'mean'.

    Returns:
      Per study a dict: "given" (the subset's name), then per target modality uint8
      [n, S, S] images or n report strings.
    """
    return self.generate_from(
      self.encode(studies, given, progress=progress), targets, num_samples, seed, latent
    )

  def generate_from(
    self,
    encoded: dict,
    targets: Sequence[str] | None = None,
    num_samples: int = 1,
    seed: int = 0,
    latent: str = "sample",
  ) -> list[dict]:
    """`generate` from what `encode` returned (row i is study i of the seed's draws)."""
    check_latent(latent)
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    targets = tuple(self.modalities if targets is None else targets)
    unknown = [m for m in targets if m not in self.modalities]
    if unknown:
      raise ValueError(f"targets {unknown}: each must be one of {self.modalities}")
    if not encoded["subset"]:
      return []
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(
      jnp.arange(len(encoded["subset"]))
    )
    z = np.asarray(_latents(encoded["mu"], encoded["logvar"], keys, num_samples, latent))
    n = z.shape[1]
    generated = self._decode(z.reshape(-1, z.shape[-1]))
    results = []
    for i, subset in enumerate(encoded["subset"]):
      result = {"given": subset}
      for m in targets:
        values = generated[m][i * n : (i + 1) * n]
        if is_text(m):
          result[m] = [self.vocabulary.decode(ids) for ids in values]
        else:
          result[m] = visualize.to_uint8(values)[..., 0]  # as the evaluation's PNGs
      results.append(result)
    return results

  def reconstruct(
    self, studies: Sequence[Study], seed: int = 0, latent: str = "mean"
  ) -> list[dict]:
    """Each study's own modalities decoded from the posterior of all of them."""
    results = self.generate(studies, None, None, 1, seed, latent)
    return [
      {k: v for k, v in r.items() if k == "given" or k in self._usable(st)}
      for r, st in zip(results, studies)
    ]


# ------------------------------------------------------------------------------------------------
# A folder of studies in, a folder of outputs out (main.py --mode=generate / --mode=encode).


def check_output_folder(output: str) -> None:
  """Raises FileExistsError unless ``output`` is absent or an empty folder."""
  if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
    raise FileExistsError(
      f"{output} exists and is not an empty folder; give a new one (or "
      "an empty one) for the outputs"
    )


def _side_by_side(model: TrainedModel, study: Study, generated: dict) -> np.ndarray | None:
  """The study's image views (a row, missing ones drawn as such) above a red line, then one row
  per sample of the generated views: uint8 [H, W, 3]; None for a model without images."""
  columns = [m for m in model.modalities if not is_text(m)]
  if not columns:
    return None
  s = model.image_size
  given = np.stack(
    [
      getattr(study, m) if getattr(study, m) is not None else np.zeros((s, s, 1), np.uint8)
      for m in columns
    ]
  )
  rows = [given]
  samples = len(generated[columns[0]])
  for i in range(samples):
    rows.append(np.stack([generated[m][i][..., None] for m in columns]))
  available = [np.asarray([getattr(study, m) is not None for m in columns])]
  return visualize.image_grid(rows, available=available + [None] * samples, separator_after=1)


def run_folder(
  model: TrainedModel,
  input_dir: str,
  output_dir: str,
  *,
  mode: str = "generate",
  given: str | None = None,
  num_samples: int = 1,
  seed: int = 0,
) -> dict:
  """Encodes (and, for ``mode='generate'``, generates from) every study folder of
  ``input_dir`` and writes, per study, under ``output_dir/<study>/``:

    latents.npz                mu, logvar [D] of the given subset, and its name
    generated_<view>_<i>.png   each generated view, sample i (generate)
    generated_report.txt       each generated report (generate)
    side_by_side.png           the study's views above a red line, the generated ones below

  and ``output_dir/latents.npz`` (every study's, with their names). A study that cannot be read
  or used is logged, listed in the summary and skipped; the others are written. Returns the
  summary (also logged).
  """
  if mode not in ("generate", "encode"):
    raise ValueError(f"mode must be 'generate' or 'encode', got {mode!r}")
  check_output_folder(output_dir)
  studies, failures = read_studies(input_dir, model.image_size, progress=True)
  usable = []
  for study in studies:
    try:
      model._subset_of(study, given)  # pylint: disable=protected-access
      usable.append(study)
    except StudyError as e:
      logging.warning("Skipping study %s: %s", study.name, e)
      failures.append((study.name, str(e)))
  os.makedirs(output_dir, exist_ok=True)
  written = {"studies": 0, "images": 0, "reports": 0, "latents": 0}
  if usable:
    encoded = model.encode(usable, given, progress=True)
    np.savez(
      os.path.join(output_dir, "latents.npz"),
      names=[st.name for st in usable],
      mu=encoded["mu"],
      logvar=encoded["logvar"],
      subset=encoded["subset"],
    )
    outputs = (
      model.generate_from(encoded, None, num_samples, seed)
      if mode == "generate"
      else [None] * len(usable)
    )
    for i, (study, generated) in enumerate(_progress(list(zip(usable, outputs)), "writing", True)):
      folder = os.path.join(output_dir, study.name)
      os.makedirs(folder)
      np.savez(
        os.path.join(folder, "latents.npz"),
        mu=encoded["mu"][i],
        logvar=encoded["logvar"][i],
        subset=encoded["subset"][i],
      )
      written["latents"] += 1
      if generated is not None:
        for m in model.modalities:
          if is_text(m):
            with open(os.path.join(folder, "generated_report.txt"), "w") as f:
              f.write(f"given: {generated['given']}\n")
              for j, report in enumerate(generated[m]):
                f.write(f"sample {j}: {report}\n")
            written["reports"] += len(generated[m])
          else:
            for j, image in enumerate(generated[m]):
              visualize.save_png(os.path.join(folder, f"generated_{m}_{j}.png"), image[..., None])
            written["images"] += len(generated[m])
        grid = _side_by_side(model, study, generated)
        if grid is not None:
          visualize.save_png(os.path.join(folder, "side_by_side.png"), grid)
      written["studies"] += 1
  summary = dict(written, skipped=failures, output=output_dir, step=model.step)
  logging.info(
    "Wrote %d studies to %s (step %d): %d generated images, %d generated reports, "
    "%d latents; skipped %d%s",
    written["studies"],
    output_dir,
    model.step,
    written["images"],
    written["reports"],
    written["latents"],
    len(failures),
    "".join(f"\n  {name}: {why}" for name, why in failures),
  )
  return summary
