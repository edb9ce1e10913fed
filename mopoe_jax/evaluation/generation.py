"""Generation (the paper's Figure 1): every modality decoded from every subset.

The protocol: docs/model.md#evaluation.

For every subset, all modalities decoded from z of q_subset (a sample or the mean,
``eval.generation.latent``) for the first ``eval.generation.studies`` complete test studies;
images are the Laplace locations clipped to [0, 1], reports the most likely word at each
position (argmax of the logits). Unconditional samples decode z ~ N(0, I). Writes PNG grids
(the given views above a red line, generated views below) and the generated reports under
``eval/generation/``; ``eval.generation.prior_samples`` unconditional samples beside them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Iterator, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from mopoe_jax.data import visualize
from mopoe_jax.data.datasource import Vocabulary
from mopoe_jax.evaluation.common import Context, EncodedSplit, Evaluator, Result, table
from mopoe_jax.platform import paths
from mopoe_jax.vae import fusion
from mopoe_jax.vae import subsets as subsets_lib
from mopoe_jax.vae.latents import LATENTS, check_latent, decode_latents
from mopoe_jax.vae.model import MoPoE, is_text

GENERATION_DIR = "generation"


@dataclasses.dataclass
class GenerationResult(Result):
  """What `write_generation` wrote (results.json's "generation")."""

  latent: str  # 'sample' or 'mean' of q_subset
  studies: list[int]  # the shown test studies' positions in the split
  reports: dict  # {subset or 'prior': [generated report per column]} (with a text modality)
  text_decoding: str
  image_values: str
  files: dict  # {subset or 'prior': {"png": path or None, "reports": path}} under eval/


@functools.partial(jax.jit, static_argnames=("model", "latent"))
def _decode_subsets(model: MoPoE, variables, mu_k, logvar_k, rng, *, latent: str):
  """Decodes z of every subset posterior [K, B, D] -> modality -> generated [K, B, ...]."""
  if latent == "sample":
    z = fusion.reparameterize(mu_k, logvar_k, jax.random.normal(rng, mu_k.shape, mu_k.dtype))
  else:
    z = mu_k
  return jax.lax.map(lambda z_k: decode_latents(model, variables, z_k), z)  # one subset at a time


def generate_from_posteriors(
  model: MoPoE,
  variables,
  mu_k: np.ndarray,
  logvar_k: np.ndarray,
  rng,
  *,
  batch_size: int,
  latent: str = "sample",
) -> Iterator[tuple[slice, dict]]:
  """Decodes every subset's posterior for studies in chunks of ``batch_size``.

  Args:
    mu_k, logvar_k: [K, N, D] subset posteriors.
    latent: 'sample' (one z ~ q_subset per study) or 'mean' (z = its mean).

  Yields:
    (rows, generated): ``rows`` a slice of the N studies, ``generated`` modality -> numpy
    [K, batch_size, ...] (the last chunk is padded; use ``[:, :rows.stop - rows.start]``):
    images in [0, 1] [.., S, S, 1], report word ids [.., T].
  """
  check_latent(latent)
  num = mu_k.shape[1]
  for chunk, first in enumerate(range(0, num, batch_size)):
    rows = slice(first, min(first + batch_size, num))
    pad = ((0, 0), (0, batch_size - (rows.stop - rows.start)), (0, 0))
    generated = _decode_subsets(
      model,
      variables,
      np.pad(mu_k[:, rows], pad),
      np.pad(logvar_k[:, rows], pad),
      jax.random.fold_in(rng, chunk),
      latent=latent,
    )
    yield rows, jax.device_get(generated)


def _subset_grid(
  model: MoPoE, subset_row: np.ndarray, studies: dict, generated: dict
) -> np.ndarray:
  """The given image views of a subset above the line, every generated view below."""
  given = {m: studies[m] for m, used in zip(model.modalities, subset_row) if used}
  given_available = {m: studies["available"][:, i] for i, m in enumerate(model.modalities)}
  return visualize.comparison_grid(given, generated, above_available=given_available)


def prior_samples(model: MoPoE, variables, rng, num_samples: int) -> dict[str, np.ndarray]:
  """Unconditional generation: modality -> generated [num_samples, ...] from z ~ N(0, I)."""
  z = jax.random.normal(rng, (num_samples, model.latent_dim))
  return jax.device_get(decode_latents(model, variables, z))


def _has_images(model: MoPoE) -> bool:
  return any(not is_text(m) for m in model.modalities)


def _reports_markdown(
  title: str, image: str | None, rows: Sequence[Sequence[str]], header: Sequence[str]
) -> str:
  out = [f"# {title}", ""]
  if image:
    out += [f"![{title}]({image})", ""]
  out += [table(header, [[c.replace("|", "\\|") for c in r] for r in rows]), ""]
  return "\n".join(out)


def write_generation(
  model: MoPoE,
  variables,
  test: EncodedSplit,
  vocab: Vocabulary | None,
  rng,
  out_dir: str,
  *,
  batch_size: int,
  latent: str,
  num_prior: int,
) -> tuple[GenerationResult, dict[str, np.ndarray]]:
  """PNG grids and generated reports under ``out_dir`` for every subset and the prior.

  Returns (what was written, name -> uint8 grid [H, W, 3] for TensorBoard).
  """
  paths.makedirs(out_dir)
  names = subsets_lib.subset_names(model.modalities, model.mask)
  text = next((m for m in model.modalities if is_text(m)), None)
  grids, files, reports = {}, {}, {}
  studies = test.studies
  if not studies:
    raise ValueError(
      f"The {test.split!r} split has no study with all of {tuple(model.modalities)}; the "
      "generation grids show complete studies. Leave 'generation' out of eval.evaluators."
    )
  num = len(studies["index"])
  cond_rng, prior_rng = jax.random.split(rng)
  ((_, generated),) = generate_from_posteriors(
    model,
    variables,
    test.mu_k[:, studies["index"]],
    test.logvar_k[:, studies["index"]],
    cond_rng,
    batch_size=max(batch_size, num),
    latent=latent,
  )
  for k, (row, name) in enumerate(zip(model.mask, names)):
    gen = {m: x[k, :num] for m, x in generated.items()}
    png = None
    if _has_images(model):
      grids[name] = _subset_grid(model, row, studies, gen)
      png = f"from_{name}.png"
      visualize.save_png(paths.join(out_dir, png), grids[name])
    rows = []
    for i in range(num):
      real = vocab.decode(studies[text][i]) if text and vocab else ""
      given = bool(text) and bool(row[list(model.modalities).index(text)])
      made = vocab.decode(gen[text][i]) if text and vocab else ""
      rows.append(
        [str(i + 1), str(studies["index"][i]), ("given: " if given else "not given: ") + real, made]
      )
    if text and vocab:
      reports[name] = [r[-1] for r in rows]
    md = f"from_{name}.md"
    paths.write_text(
      paths.join(out_dir, md),
      _reports_markdown(
        f"Generated from {name} ({latent} of q_subset)",
        png,
        rows,
        ["column", f"{test.split} study", "real report", "generated report"],
      ),
    )
    files[name] = {"png": png, "reports": md}
  prior = prior_samples(model, variables, prior_rng, num_prior)
  png = None
  if _has_images(model):
    grids["prior"] = visualize.samples_grid(prior)
    png = "prior.png"
    visualize.save_png(paths.join(out_dir, png), grids["prior"])
  rows = [
    [str(i + 1), vocab.decode(prior[text][i]) if text and vocab else ""] for i in range(num_prior)
  ]
  if text and vocab:
    reports["prior"] = [r[-1] for r in rows]
  paths.write_text(
    paths.join(out_dir, "prior.md"),
    _reports_markdown(
      "Unconditional samples, z ~ N(0, I)", png, rows, ["column", "generated report"]
    ),
  )
  files["prior"] = {"png": png, "reports": "prior.md"}
  logging.info(
    "Wrote generation grids and reports of %d subsets and the prior to %s.", len(names), out_dir
  )
  return GenerationResult(
    latent=latent,
    studies=[int(i) for i in studies["index"]],
    reports=reports,
    text_decoding="argmax of the logits at each position",
    image_values="Laplace location clipped to [0, 1]",
    files={
      k: {kk: (os.path.join(GENERATION_DIR, v) if v else None) for kk, v in f.items()}
      for k, f in files.items()
    },
  ), grids


class Generation(Evaluator):
  """Grids and reports of every subset and the prior under ``<eval_dir>/generation/``."""

  name = "generation"

  def default_config(self) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.studies = 8  # complete test studies shown, one column each
    c.prior_samples = 16  # unconditional samples, z ~ N(0, I)
    c.latent = "sample"  # 'sample' of q_subset or its 'mean'
    return c

  def check(self, config: ml_collections.ConfigDict) -> None:
    g = config.eval.generation
    if g.latent not in LATENTS:
      raise ValueError(f"config.eval.generation.latent must be one of {LATENTS}, got {g.latent!r}.")
    for field in ("studies", "prior_samples"):
      if g[field] < 1:
        raise ValueError(f"config.eval.generation.{field} must be >= 1, got {g[field]}.")

  def test_studies_kept(self, config: ml_collections.ConfigDict) -> int:
    return config.eval.generation.studies

  def run(self, ctx: Context) -> GenerationResult:
    g = ctx.config.eval.generation
    result, grids = write_generation(
      ctx.model,
      ctx.variables,
      ctx.test(),
      ctx.data.vocab,
      ctx.rng_for(self.name),
      paths.join(ctx.eval_dir, GENERATION_DIR),
      batch_size=ctx.config.eval.batch_size,
      latent=g.latent,
      num_prior=g.prior_samples,
    )
    ctx.images.update(grids)
    return result

  def markdown(self, result: GenerationResult, settings: dict) -> str:
    """The report.md section: every grid and a link to its reports."""
    out = [
      "## Generation",
      "",
      f"Given inputs above the red line, generated views below ({result.latent} of "
      f"q_subset); one column per {settings['test_split']} study. Reports beside each grid.",
      "",
    ]
    for name, files in result.files.items():
      title = "prior N(0, I)" if name == "prior" else f"from {name}"
      out += [f"### {title}", ""]
      if files["png"]:
        out += [f"![{title}]({files['png']})", ""]
      out += [f"Reports: [{files['reports']}]({files['reports']})", ""]
    return "\n".join(out)
