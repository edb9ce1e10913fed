"""FINDINGS sections of the synthetic studies and the CheXpert labels they imply.

The report is written from the study's ``TruthState``s and ``Scene`` with sentences from
``PHRASES`` (several paraphrases each), region by region as radiologists dictate: support
devices, lungs, pleura, heart and mediastinum, bones. Labels follow what the report says,
the way the CheXpert labeler reads a report:
  1    a drawn finding the report states,
  -1   a finding the report hedges about (drawn mild, or not drawn at all),
  0    a finding a negation sentence rules out ("no pleural effusion"),
  NaN  a finding the report does not mention, including now and then (``P_UNMENTIONED``)
       a drawn finding the radiologist left out.
No Finding is 1 when no pathology other than Support Devices is 1 or -1, NaN otherwise.
"""

from __future__ import annotations

import itertools
import re
from typing import Iterator

import numpy as np

from input_pipeline import features as features_lib
from input_pipeline.synthetic_cxr import scene as scene_lib
from input_pipeline.synthetic_cxr.scene import TruthState

# Share of drawn findings the report leaves unmentioned (label NaN despite the picture).
P_UNMENTIONED = 0.1

# Values each placeholder of a template can take.
FILLERS = {
  "side": ("right", "left"),
  "other": ("right", "left"),
  "zone": (
    "right upper lobe",
    "left upper lobe",
    "right middle lobe",
    "lingula",
    "right lower lobe",
    "left lower lobe",
  ),
  "size": ("small", "moderate", "large"),
  "severity": ("mild", "moderate"),
  "cm": ("2", "3", "4", "5"),
  "num": ("3", "4", "5"),
}

PHRASES = {
  # Support devices, one sentence per device.
  "ett": (
    "endotracheal tube terminates {num} cm above the carina.",
    "the endotracheal tube is in standard position.",
  ),
  "cvc": (
    "{side} internal jugular central venous catheter terminates in the svc.",
    "{side} subclavian central line tip projects over the svc.",
  ),
  "ng": ("enteric tube courses below the diaphragm.", "nasogastric tube tip is in the stomach."),
  "pacemaker": (
    "{side} chest wall pacemaker with leads in the right atrium and right ventricle.",
    "dual-chamber pacemaker in place.",
  ),
  "sternal_wires": ("median sternotomy wires are intact.", "intact sternotomy wires."),
  # Lungs.
  "opacity": (
    "there is a patchy opacity in the {zone}.",
    "{zone} opacity is noted.",
    "an ill-defined opacity projects over the {zone}.",
  ),
  "opacity_bilateral": ("patchy bilateral opacities.", "there are patchy opacities in both lungs."),
  "opacity_hedged": (
    "possible opacity in the {zone}.",
    "questionable faint opacity in the {zone}.",
  ),
  "opacity_doubt": ("questionable faint opacity.",),
  "pneumonia": (
    "{zone} opacity concerning for pneumonia.",
    "findings are consistent with pneumonia in the {zone}.",
    "{zone} pneumonia.",
  ),
  "pneumonia_hedged": (
    "possible early pneumonia in the {zone}.",
    "cannot exclude pneumonia in the {zone}.",
  ),
  "pneumonia_doubt": ("cannot exclude pneumonia.", "pneumonia is not excluded."),
  "consolidation": (
    "focal consolidation in the {zone}.",
    "there is consolidation of the {zone}.",
    "dense {zone} consolidation.",
  ),
  "consolidation_hedged": (
    "possible {zone} consolidation.",
    "cannot exclude consolidation in the {zone}.",
  ),
  "consolidation_doubt": ("cannot exclude early consolidation.",),
  "edema": (
    "there is {severity} pulmonary edema.",
    "{severity} interstitial pulmonary edema.",
    "perihilar haziness consistent with {severity} pulmonary edema.",
  ),
  "edema_hedged": (
    "possible mild pulmonary edema.",
    "mild vascular congestion, cannot exclude edema.",
  ),
  "edema_doubt": ("possible mild pulmonary edema.",),
  "atelectasis": (
    "{side} basilar atelectasis.",
    "plate-like atelectasis at the {side} base.",
    "there is atelectasis at the {side} lung base.",
  ),
  "atelectasis_bilateral": ("bibasilar atelectasis.", "there is bibasilar atelectasis."),
  "atelectasis_hedged": (
    "possible {side} basilar atelectasis.",
    "minimal atelectasis versus scarring at the {side} base.",
  ),
  "atelectasis_doubt": ("minimal atelectasis is not excluded.",),
  "nodule": (
    "a {cm} cm nodule in the {zone}.",
    "there is a {cm} cm nodular opacity in the {zone}.",
    "{zone} nodule measuring {cm} cm.",
  ),
  "mass": ("a {cm} cm mass in the {zone}.", "there is a {zone} mass."),
  "nodule_hedged": (
    "possible small nodule in the {zone}.",
    "questionable nodular opacity in the {zone}.",
  ),
  # Pleura.
  "effusion": ("{size} {side} pleural effusion.", "there is a {size} {side} pleural effusion."),
  "effusion_bilateral": (
    "{size} bilateral pleural effusions.",
    "bilateral pleural effusions, {side} greater than {other}.",
  ),
  "effusion_lateral_only": (
    "small {side} pleural effusion, seen only on the lateral view.",
    "small {side} effusion is seen on the lateral view only.",
  ),
  "effusion_hedged": (
    "possible small {side} pleural effusion.",
    "trace {side} effusion is not excluded.",
  ),
  "effusion_doubt": ("possible trace pleural effusion.",),
  "pneumothorax": (
    "{size} {side} pneumothorax.",
    "there is a {size} {side} apical pneumothorax.",
    "{side} pneumothorax is present.",
  ),
  "pneumothorax_hedged": (
    "possible tiny {side} apical pneumothorax.",
    "questionable {side} pneumothorax.",
  ),
  "pneumothorax_doubt": ("questionable tiny pneumothorax.",),
  "pleural_other": (
    "{side} pleural thickening.",
    "pleural thickening along the {side} lateral chest wall.",
    "calcified pleural plaque on the {side}.",
  ),
  "pleural_other_hedged": (
    "possible {side} pleural thickening.",
    "questionable {side} pleural plaque.",
  ),
  # Heart and mediastinum.
  "cardiomegaly": (
    "the heart is enlarged.",
    "{severity} cardiomegaly.",
    "the cardiac silhouette is enlarged.",
    "cardiomegaly is present.",
  ),
  "cardiomegaly_hedged": (
    "borderline heart size.",
    "the heart size is top normal to mildly enlarged.",
  ),
  "mediastinum": (
    "the mediastinum is widened.",
    "widening of the mediastinum.",
    "mediastinal widening is present.",
    "the superior mediastinum is wide.",
  ),
  "mediastinum_hedged": (
    "possible mediastinal widening.",
    "the mediastinum may be slightly widened.",
  ),
  # Bones.
  "fracture": (
    "there is an acute {side} rib fracture.",
    "displaced fracture of a {side} rib.",
    "a {side} rib fracture is seen.",
  ),
  "fracture_hedged": (
    "possible {side} rib fracture.",
    "questionable nondisplaced {side} rib fracture.",
  ),
  # Framing sentences.
  "views_both": ("frontal and lateral views of the chest.",),
  "views_frontal": ("single frontal view of the chest.",),
  "normal_closing": ("no acute cardiopulmonary process.", "no acute cardiopulmonary abnormality."),
}

# Negations by region: (labels the sentence rules out, paraphrases). A negation is used only
# when all its labels are ABSENT (not drawn, not hedged).
NEGATIONS = {
  "lungs": (
    (
      ("Lung Opacity", "Consolidation", "Pneumonia", "Edema", "Atelectasis", "Lung Lesion"),
      (
        "the lungs are clear.",
        "the lungs are clear bilaterally.",
        "lungs are well expanded and clear.",
      ),
    ),
    (("Consolidation",), ("there is no focal consolidation.", "no focal consolidation is seen.")),
    (("Edema",), ("there is no pulmonary edema.", "no pulmonary vascular congestion or edema.")),
    (("Pneumonia",), ("no evidence of pneumonia.",)),
  ),
  "pleura": (
    (
      ("Pleural Effusion", "Pneumothorax"),
      (
        "there is no pleural effusion or pneumothorax.",
        "no pleural effusion or pneumothorax is seen.",
        "no effusion or pneumothorax.",
      ),
    ),
    (("Pleural Effusion",), ("no pleural effusion.",)),
    (("Pneumothorax",), ("there is no pneumothorax.", "no pneumothorax is seen.")),
  ),
  "heart": (
    (
      ("Cardiomegaly", "Enlarged Cardiomediastinum"),
      (
        "the cardiomediastinal silhouette is within normal limits.",
        "normal cardiomediastinal contours.",
      ),
    ),
    (("Cardiomegaly",), ("heart size is normal.", "the heart is normal in size.")),
    (
      ("Enlarged Cardiomediastinum",),
      ("mediastinal and hilar contours are normal.", "the mediastinum is not widened."),
    ),
  ),
  "bones": (
    (
      ("Fracture",),
      (
        "no acute osseous abnormality.",
        "the osseous structures are intact.",
        "no displaced rib fracture.",
      ),
    ),
  ),
}

# Region of each pathology, in dictation order.
REGIONS = {
  "devices": ("Support Devices",),
  "lungs": ("Lung Opacity", "Pneumonia", "Consolidation", "Edema", "Atelectasis", "Lung Lesion"),
  "pleura": ("Pleural Effusion", "Pneumothorax", "Pleural Other"),
  "heart": ("Cardiomegaly", "Enlarged Cardiomediastinum"),
  "bones": ("Fracture",),
}
# Phrase keys of each pathology (positive form; '_hedged' and '_doubt' forms share the stem).
PHRASE_KEYS = {
  "Lung Opacity": "opacity",
  "Pneumonia": "pneumonia",
  "Consolidation": "consolidation",
  "Edema": "edema",
  "Atelectasis": "atelectasis",
  "Lung Lesion": "nodule",
  "Pleural Effusion": "effusion",
  "Pneumothorax": "pneumothorax",
  "Pleural Other": "pleural_other",
  "Cardiomegaly": "cardiomegaly",
  "Enlarged Cardiomediastinum": "mediastinum",
  "Fracture": "fracture",
}
assert sorted(sum(REGIONS.values(), ())) == sorted(scene_lib.PATHOLOGIES)

_PLACEHOLDER_RE = re.compile(r"\{(\w+)\}")


def _side_word(side: int) -> str:
  return "right" if side < 0 else "left"


def _zone_word(side: int, y: float) -> str:
  zone = scene_lib.zone_of(y)
  if zone == "middle":
    return "right middle lobe" if side < 0 else "lingula"
  return f"{_side_word(side)} {zone} lobe"


def _size_word(value: float, medium: float, large: float) -> str:
  return "small" if value < medium else ("moderate" if value < large else "large")


def _pick(rng: np.random.Generator, key: str, **fill) -> str:
  templates = PHRASES[key]
  return templates[int(rng.random() * len(templates))].format(**fill)


def _finding_sentences(
  pathology: str, state: TruthState, scene: scene_lib.Scene, rng: np.random.Generator
) -> list[str]:
  """Sentences stating (PRESENT) or hedging (EQUIVOCAL, DOUBT) one pathology."""
  stem = PHRASE_KEYS.get(pathology)
  if state == TruthState.DOUBT:
    return [_pick(rng, f"{stem}_doubt")]
  hedged = state == TruthState.EQUIVOCAL
  suffix = "_hedged" if hedged else ""
  if pathology == "Support Devices":
    return [
      _pick(rng, d, num=str(3 + int(rng.random() * 3)), side=_side_word(scene.line_side))
      for d in scene.devices
    ]
  if pathology in ("Lung Opacity", "Pneumonia", "Consolidation"):
    kind = {"Lung Opacity": "opacity", "Pneumonia": "pneumonia", "Consolidation": "consolidation"}[
      pathology
    ]
    patches = [p for p in scene.patches if p.kind == kind]
    if kind == "opacity" and not hedged and len({p.side for p in patches}) > 1:
      return [_pick(rng, "opacity_bilateral")]
    return [_pick(rng, stem + suffix, zone=_zone_word(patches[0].side, patches[0].y))]
  if pathology == "Edema":
    return [_pick(rng, stem + suffix, severity="mild" if scene.edema < 0.42 else "moderate")]
  if pathology == "Atelectasis":
    if len(scene.atelectasis) > 1 and not hedged:
      return [_pick(rng, "atelectasis_bilateral")]
    return [_pick(rng, stem + suffix, side=_side_word(scene.atelectasis[0][0]))]
  if pathology == "Lung Lesion":
    zone = _zone_word(scene.nodule_side, scene.nodule_y)
    if hedged:
      return [_pick(rng, "nodule_hedged", zone=zone)]
    # About 24 cm per body unit: radius 0.045 .. 0.11 is a 2 .. 5 cm diameter.
    cm = int(np.clip(round(2 * scene.nodule_radius * 24), 2, 5))
    key = "mass" if cm > 3 else "nodule"
    return [_pick(rng, key, zone=zone, cm=str(cm))]
  if pathology == "Pleural Effusion":
    levels = {-1: scene.effusion_right, 1: scene.effusion_left}
    side = max(levels, key=levels.get)
    if hedged:
      return [_pick(rng, "effusion_hedged", side=_side_word(side))]
    size = _size_word(levels[side], 0.12, 0.24)
    if min(levels.values()) > 0:
      return [
        _pick(rng, "effusion_bilateral", size=size, side=_side_word(side), other=_side_word(-side))
      ]
    if levels[side] < scene_lib.FRONTAL_HIDDEN_EFFUSION:
      return [_pick(rng, "effusion_lateral_only", side=_side_word(side))]
    return [_pick(rng, "effusion", size=size, side=_side_word(side))]
  if pathology == "Pneumothorax":
    return [
      _pick(
        rng,
        stem + suffix,
        side=_side_word(scene.pneumothorax_side),
        size=_size_word(scene.pneumothorax_size, 0.28, 0.35),
      )
    ]
  if pathology == "Pleural Other":
    return [_pick(rng, stem + suffix, side=_side_word(scene.pleural_side))]
  if pathology == "Cardiomegaly":
    return [
      _pick(rng, stem + suffix, severity="mild" if scene.heart_width_ratio < 0.6 else "moderate")
    ]
  if pathology == "Enlarged Cardiomediastinum":
    return [_pick(rng, stem + suffix)]
  if pathology == "Fracture":
    return [_pick(rng, stem + suffix, side=_side_word(scene.fracture_side))]
  raise ValueError(f"No phrases for pathology {pathology!r}; add it to PHRASE_KEYS.")


def write_report(
  truth: dict[str, TruthState],
  scene: scene_lib.Scene,
  rng: np.random.Generator,
  lateral_available: bool = True,
) -> tuple[str, np.ndarray]:
  """Writes the FINDINGS text of one study and the labels it implies.

  Returns (report, labels float32 [14] in ``features.LABELS`` order).
  """
  normal = not any(s != TruthState.ABSENT for s in truth.values())
  labels = {label: np.nan for label in features_lib.LABELS}
  sentences = []
  if rng.random() < 0.2:
    sentences.append(_pick(rng, "views_both" if lateral_available else "views_frontal"))
  for region, pathologies in REGIONS.items():
    # 1. What the patient has (or what the radiologist doubts).
    for pathology in pathologies:
      state = truth[pathology]
      if state == TruthState.PRESENT and rng.random() < P_UNMENTIONED:
        continue
      if state == TruthState.ABSENT:
        continue
      sentences.extend(_finding_sentences(pathology, state, scene, rng))
      labels[pathology] = 1.0 if state == TruthState.PRESENT else -1.0
    # 2. What the report rules out.
    p_take = 0.85 if normal else 0.6
    for covered, templates in NEGATIONS.get(region, ()):
      if any(truth[l] != TruthState.ABSENT or labels[l] == 0.0 for l in covered):
        continue
      if rng.random() < p_take:
        sentences.append(templates[int(rng.random() * len(templates))])
        labels.update({l: 0.0 for l in covered})
      p_take = 0.35
  if normal and rng.random() < 0.4 or not sentences:
    sentences.append(
      _pick(rng, "normal_closing")
      if normal
      else _pick(rng, "views_both" if lateral_available else "views_frontal")
    )
  pathologies_stated = [
    l for l in scene_lib.PATHOLOGIES if l != "Support Devices" and labels[l] in (1.0, -1.0)
  ]
  if not pathologies_stated:
    labels["No Finding"] = 1.0
  report = " ".join(s[0].upper() + s[1:] for s in sentences)
  return report, np.array([labels[l] for l in features_lib.LABELS], dtype=np.float32)


def phrase_bank_sentences() -> Iterator[str]:
  """Every sentence the phrase bank can produce: each template with each filler combination."""
  templates = [t for ts in PHRASES.values() for t in ts]
  templates += [t for groups in NEGATIONS.values() for _, ts in groups for t in ts]
  for template in templates:
    names = sorted(set(_PLACEHOLDER_RE.findall(template)))
    for values in itertools.product(*(FILLERS[n] for n in names)):
      yield template.format(**dict(zip(names, values)))
