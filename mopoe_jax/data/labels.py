"""The labels a study carries and the targets made from them.

``labels`` holds the 14 CheXpert labels (`LABELS`) with values 1 (positive), 0 (negative), -1
(uncertain) and NaN (not mentioned); the probes and the coherence classifiers score the 15
`PROBE_LABELS`: "Finding", made from the 14 by the config's ``data.finding_rule``
(`FINDING_RULES`), then the 14 (`label_targets`). How they are used: docs/evaluation.md.
"""

from __future__ import annotations

import numpy as np

# The columns of ``labels``: the 14 CheXpert labels.
LABELS = (
  "Atelectasis",
  "Cardiomegaly",
  "Consolidation",
  "Edema",
  "Enlarged Cardiomediastinum",
  "Fracture",
  "Lung Lesion",
  "Lung Opacity",
  "No Finding",
  "Pleural Effusion",
  "Pleural Other",
  "Pneumonia",
  "Pneumothorax",
  "Support Devices",
)
# What the probes and classifiers score: "Finding" (made from ``labels`` by the config's
# ``data.finding_rule``), then LABELS.
PROBE_LABELS = ("Finding",) + LABELS


# How "Finding" (column 0 of the targets) is made from the 14 stored labels (config
# ``data.finding_rule``). Both read the 13 pathologies, every label but "No Finding":
#   "reference":    sum of the raw values > 0, blanks (NaN) skipped and -1 (uncertain) counted, as
#                   the reference code computes it; one positive plus one uncertain label sums
#                   to 0 and is NEGATIVE.
#   "any_positive": any of the 13 is 1.0 (the paper's words; the builders' ``finding`` column).
FINDING_RULES = ("reference", "any_positive")
FINDING_RULE_NOTES = {
  "reference": "sum of the 13 pathologies' raw values > 0 (blank skipped, -1 counted: one "
  "positive plus one uncertain is negative), as the reference code",
  "any_positive": "any of the 13 pathologies positive (1.0), as the paper's words",
}
_PATHOLOGIES = np.array([name != "No Finding" for name in LABELS])


def finding_targets(labels: np.ndarray, finding_rule: str) -> np.ndarray:
  """The "Finding" target of every study under ``finding_rule`` (see FINDING_RULES).

  Args:
    labels: float [N, 14] in LABELS order, values 1 / 0 / -1 / NaN.
    finding_rule: 'reference' or 'any_positive'.

  Returns:
    int32 [N], 0 or 1.
  """
  pathologies = np.asarray(labels, np.float32)[:, _PATHOLOGIES]
  if finding_rule == "reference":
    return (np.nansum(pathologies, axis=1) > 0).astype(np.int32)
  if finding_rule == "any_positive":
    return np.any(pathologies == 1.0, axis=1).astype(np.int32)
  raise ValueError(
    f"config.data.finding_rule must be one of {FINDING_RULES}, got {finding_rule!r}."
  )


def label_targets(labels: np.ndarray, finding_rule: str) -> np.ndarray:
  """Binary targets of the 15 PROBE_LABELS, int32 [N, 15].

  Column 0 is "Finding", made from the 14 stored labels by ``finding_rule``
  (`finding_targets`; not the builder's ``finding`` column, so both rules work on any prepared
  dataset); columns 1..14 are the CheXpert labels in ``LABELS`` order. A CheXpert label counts
  as positive only where its value is 1.0; negative (0.0), uncertain (-1.0) and not mentioned
  (NaN) all count as negative.

  Args:
    labels: float32 [N, 14] with values 1 / 0 / -1 / NaN.
    finding_rule: 'reference' or 'any_positive' (``config.data.finding_rule``).
  """
  labels = np.asarray(labels, np.float32)
  finding = finding_targets(labels, finding_rule)[:, None]
  return np.concatenate([finding == 1, labels == 1.0], axis=1).astype(np.int32)
