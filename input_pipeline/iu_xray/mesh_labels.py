"""The 14 labels of an Indiana University report, derived from its MeSH major terms.

The collection has no CheXpert labels. Each report was indexed by hand with MeSH-based terms
(``<MeSH><major>`` in the XML): a term, then optional "/"-separated qualifiers, e.g.
``Cardiomegaly/mild``, ``Opacity/lung/base/left``, ``Pulmonary Atelectasis/base/bilateral``, or
``normal``. `labels_from_terms` maps them to the MIMIC label columns with `RULES`:

- a label is 1.0 where at least one of the report's major terms matches one of its rules;
- ``normal`` sets No Finding to 1.0, unless a term sets one of the 13 pathologies;
- every other label stays NaN ("not mentioned", as a blank in MIMIC-CXR's CSV): the terms do not
  say that a finding is absent, so no label is ever 0.0 and none is -1.0 (uncertain);
- terms that match no rule (e.g. Calcified Granuloma, Thoracic Vertebrae/degenerative, Aorta,
  Emphysema, Hernia, Hiatal) and ``No Indexing`` set nothing; the builder counts them
  (``info.metadata["labels"]["unmapped_terms"]``), and a report whose terms set nothing has all
  14 labels NaN.

These labels are a mapping of a different annotation, not MIMIC-CXR's CheXpert labels: the
probes' numbers on this collection are not comparable with the paper's Table 1.
The automatic terms (``<MeSH><automatic>``, machine-extracted) are not read.
"""

from __future__ import annotations

import collections
from typing import Iterable, Sequence

import numpy as np

from input_pipeline import features

NO_INDEXING = "no indexing"  # the report was not indexed: sets nothing, counts as no term

# (label, MeSH term, qualifier): a major term matches when its term (before the first "/") equals
# the rule's term and, where the rule names a qualifier, one of its qualifiers equals it (both
# compared in lower case). Every row matches reports of the collection (checked against
# NLMCXR_reports.tgz). Rendered as the table in docs/iu_xray.md (a test compares them).
RULES: tuple[tuple[str, str, str | None], ...] = (
  ("Atelectasis", "Pulmonary Atelectasis", None),
  ("Cardiomegaly", "Cardiomegaly", None),
  ("Cardiomegaly", "Cardiac Shadow", "enlarged"),
  ("Consolidation", "Consolidation", None),
  ("Edema", "Pulmonary Edema", None),
  ("Edema", "Pulmonary Congestion", None),
  ("Enlarged Cardiomediastinum", "Mediastinum", "enlarged"),
  ("Enlarged Cardiomediastinum", "Mediastinum", "prominent"),
  ("Fracture", "Fractures, Bone", None),
  ("Lung Lesion", "Nodule", None),
  ("Lung Lesion", "Mass", None),
  ("Lung Opacity", "Opacity", None),
  ("Lung Opacity", "Infiltrate", None),
  ("Lung Opacity", "Airspace Disease", None),
  ("Lung Opacity", "Density", None),
  ("Lung Opacity", "Lung Diseases, Interstitial", None),
  ("No Finding", "normal", None),
  ("Pleural Effusion", "Pleural Effusion", None),
  ("Pleural Effusion", "Costophrenic Angle", "blunted"),
  ("Pleural Effusion", "Hydropneumothorax", None),
  ("Pleural Other", "Thickening", "pleura"),
  ("Pneumonia", "Pneumonia", None),
  ("Pneumothorax", "Pneumothorax", None),
  ("Pneumothorax", "Hydropneumothorax", None),
  ("Support Devices", "Catheters, Indwelling", None),
  ("Support Devices", "Implanted Medical Device", None),
  ("Support Devices", "Medical Device", None),
  ("Support Devices", "Surgical Instruments", None),
  ("Support Devices", "Tube, Inserted", None),
  ("Support Devices", "Stents", None),
)

_RULES_BY_TERM: dict[str, list[tuple[str, str | None]]] = collections.defaultdict(list)
for _label, _term, _qualifier in RULES:
  if _label not in features.LABELS:
    raise ValueError(f"RULES names {_label!r}, which is not one of {features.LABELS}.")
  _RULES_BY_TERM[_term.lower()].append((_label, None if _qualifier is None else _qualifier.lower()))

_NO_FINDING = features.LABELS.index("No Finding")


def split_term(major: str) -> tuple[str, tuple[str, ...]]:
  """'Opacity/lung/base/left' -> ('opacity', ('lung', 'base', 'left')), lower case, stripped."""
  parts = [p.strip().lower() for p in major.split("/")]
  return parts[0], tuple(p for p in parts[1:] if p)


def labels_of_term(major: str) -> set[str]:
  """The labels one major term sets (empty where no rule matches it)."""
  term, qualifiers = split_term(major)
  return {
    label
    for label, qualifier in _RULES_BY_TERM.get(term, ())
    if qualifier is None or qualifier in qualifiers
  }


def labels_from_terms(majors: Sequence[str]) -> np.ndarray:
  """float32 [14] in features.LABELS order: 1.0 where a term sets the label, NaN elsewhere."""
  labels = np.full((len(features.LABELS),), np.nan, dtype=np.float32)
  for major in majors:
    for label in labels_of_term(major):
      labels[features.LABELS.index(label)] = 1.0
  pathologies = np.delete(labels, _NO_FINDING)
  if np.any(pathologies == 1.0):
    labels[_NO_FINDING] = np.nan
  return labels


def unmapped_terms(majors_of_reports: Iterable[Sequence[str]]) -> collections.Counter:
  """How many reports carry each term (before its first "/") that sets no label ("No Indexing"
  left out)."""
  counts = collections.Counter()
  for majors in majors_of_reports:
    counts.update({split_term(m)[0] for m in majors if not labels_of_term(m)} - {NO_INDEXING})
  return counts
