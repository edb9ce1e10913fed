"""What one synthetic study contains: the findings, the patient and the geometry to draw.

A study is sampled in two steps from the study's own random stream:
  1. ``sample_truth``: which of the 13 pathologies the patient has, and how the report will
     treat each one (``TruthState``), with correlated prevalences from a few disease profiles
     (heart failure, infection, critical care, mass, trauma) and about 40% normal studies.
  2. ``sample_scene``: the patient (body size, rotation, position, exposure, noise) and the
     geometry of every finding (heart width, effusion levels, opacity patches, ...), all in
     body coordinates, from which ``render`` draws both views.

Coordinates (frontal view, PA): x from the image's left (-1) to right (+1), y from the top (-1)
to the bottom (+1). The patient faces the viewer, so the patient's RIGHT is the image's LEFT:
``side = -1`` is the patient's right, ``side = +1`` the patient's left. The lateral view shares
y; its horizontal axis is the depth z from anterior (-1, image left) to posterior (+1).
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np

from input_pipeline import features as features_lib

PATHOLOGIES = tuple(l for l in features_lib.LABELS if l != "No Finding")

# Share of studies sampled as normal (No Finding = 1 and no pathology drawn).
P_NORMAL = 0.42
# Share of drawn findings the report hedges about (label -1); those are drawn mild.
P_EQUIVOCAL = 0.12
# Per eligible absent finding of an abnormal study: the report hedges about it anyway.
P_DOUBT = 0.03
DOUBT_ELIGIBLE = (
  "Atelectasis",
  "Consolidation",
  "Edema",
  "Lung Opacity",
  "Pleural Effusion",
  "Pneumonia",
  "Pneumothorax",
)

# Disease profiles of abnormal studies: (probability of the profile, {pathology: probability}).
PROFILES = {
  "cardiac": (
    0.35,
    {
      "Cardiomegaly": 0.85,
      "Edema": 0.45,
      "Pleural Effusion": 0.55,
      "Enlarged Cardiomediastinum": 0.25,
      "Support Devices": 0.3,
      "Atelectasis": 0.15,
    },
  ),
  "infection": (
    0.35,
    {
      "Pneumonia": 0.6,
      "Consolidation": 0.45,
      "Lung Opacity": 0.6,
      "Pleural Effusion": 0.25,
      "Atelectasis": 0.3,
    },
  ),
  "critical_care": (
    0.3,
    {
      "Support Devices": 0.95,
      "Atelectasis": 0.45,
      "Pleural Effusion": 0.35,
      "Pneumothorax": 0.12,
      "Edema": 0.2,
      "Lung Opacity": 0.3,
    },
  ),
  "mass": (
    0.1,
    {
      "Lung Lesion": 0.95,
      "Lung Opacity": 0.25,
      "Pleural Effusion": 0.15,
      "Enlarged Cardiomediastinum": 0.2,
    },
  ),
  "trauma": (
    0.06,
    {"Fracture": 0.8, "Pneumothorax": 0.35, "Pleural Other": 0.2, "Lung Opacity": 0.3},
  ),
}
# Findings that come with any abnormal study, independently of the profiles.
BACKGROUND = {
  "Atelectasis": 0.08,
  "Fracture": 0.02,
  "Lung Lesion": 0.03,
  "Lung Opacity": 0.06,
  "Pleural Other": 0.03,
  "Support Devices": 0.08,
}

DEVICES = ("ett", "cvc", "ng", "pacemaker", "sternal_wires")

# Effusions smaller than this (share of the lung height) fill only the posterior costophrenic
# angle: visible on the lateral view, hidden behind the dome on the frontal view.
FRONTAL_HIDDEN_EFFUSION = 0.08
# Nodules with a smaller radius are hidden on the lateral view (superimposed structures).
LATERAL_MIN_NODULE = 0.065

# Body-coordinate anatomy of an average patient.
THORAX_HALF_WIDTH = 0.62  # lung outer edge, before the patient's width factor
LUNG_APEX = -0.8
LUNG_BASE = 0.55  # lateral costophrenic angle
LUNG_HEIGHT = LUNG_BASE - LUNG_APEX


class TruthState(str, enum.Enum):
  """A pathology in one study: in the picture or not, and what the report says."""

  ABSENT = "absent"  # not drawn; the report negates it or stays silent (0 or NaN)
  PRESENT = "present"  # drawn; the report states it (1) or, now and then, omits it
  EQUIVOCAL = "equivocal"  # drawn mild; the report hedges (-1)
  DOUBT = "doubt"  # not drawn; the report hedges anyway (-1)

  @property
  def drawn(self) -> bool:
    return self in (TruthState.PRESENT, TruthState.EQUIVOCAL)


@dataclasses.dataclass(frozen=True)
class Patch:
  """One airspace opacity: a blob of fluid density inside a lung."""

  kind: str  # 'opacity' | 'pneumonia' | 'consolidation'
  side: int  # -1 patient's right (image left), +1 patient's left
  x_rel: float  # lateral position as a share of the thorax half-width, 0 medial .. 1
  y: float  # vertical position (body coordinates)
  depth: float  # position on the lateral view's depth axis, -1 anterior .. 1 posterior
  sigma: float  # size (body coordinates)
  density: float  # share of the lung air it replaces at its centre, 0..1


def zone_of(y: float) -> str:
  """'upper' | 'middle' | 'lower' lung zone of the height ``y``."""
  if y < -0.3:
    return "upper"
  return "middle" if y < 0.05 else "lower"


@dataclasses.dataclass(frozen=True)
class Scene:
  """The patient and every finding's geometry; ``render`` draws it, ``reports`` describes it."""

  # Patient and acquisition (nuisance).
  body_scale: float  # global zoom of the body in the image
  body_width: float  # width factor of the chest (thin .. broad)
  body_depth: float  # antero-posterior depth factor (lateral view)
  inspiration: float  # vertical factor of the lungs
  rotation_frontal: float  # degrees
  rotation_lateral: float  # degrees
  shift_frontal: tuple[float, float]
  shift_lateral: tuple[float, float]
  exposure: float  # attenuation gain: higher is brighter
  gamma: float
  noise_std: float
  # Findings.
  heart_width_ratio: float  # cardiothoracic ratio: heart width / thorax width
  mediastinum_width: float  # superior mediastinum width / thorax width
  effusion_right: float  # fluid height as a share of the lung height (0: none)
  effusion_left: float
  patches: tuple[Patch, ...]
  atelectasis: tuple[tuple[int, float], ...]  # (side, band length) per band
  edema: float  # perihilar haze strength (0: none)
  nodule_radius: float  # 0: none
  nodule_side: int
  nodule_x_rel: float
  nodule_y: float
  nodule_depth: float
  fracture_displacement: float  # rib step as a share of the rib spacing (0: none)
  fracture_side: int
  fracture_rib: int
  fracture_x_rel: float
  pneumothorax_size: float  # lung edge retraction as a share of the lung width (0: none)
  pneumothorax_side: int
  pleural_thickening: float  # thickness (0: none)
  pleural_side: int
  devices: tuple[str, ...]  # subset of DEVICES
  line_side: int  # side of the central venous catheter / pacemaker pocket

  @property
  def thorax_half_width(self) -> float:
    return THORAX_HALF_WIDTH * self.body_width


ATTRIBUTE_NAMES = (
  "body_scale",
  "body_width",
  "rotation_frontal",
  "rotation_lateral",
  "shift_x",
  "shift_y",
  "exposure",
  "gamma",
  "noise_std",
  "inspiration",
  "heart_width_ratio",
  "mediastinum_width",
  "effusion_level_left",
  "effusion_level_right",
  "opacity_count",
  "opacity_area",
  "opacity_density",
  "atelectasis_length",
  "edema_severity",
  "nodule_size",
  "fracture_displacement",
  "pneumothorax_size",
  "pleural_thickening",
  "device_count",
  "pacemaker",
)


def scene_attributes(scene: Scene) -> dict[str, np.float32]:
  """The ground-truth rendering attributes kept with each example (float32 scalars)."""
  lung_area = 2 * 0.75 * scene.thorax_half_width * LUNG_HEIGHT * scene.inspiration
  values = {
    "body_scale": scene.body_scale,
    "body_width": scene.body_width,
    "rotation_frontal": scene.rotation_frontal,
    "rotation_lateral": scene.rotation_lateral,
    "shift_x": scene.shift_frontal[0],
    "shift_y": scene.shift_frontal[1],
    "exposure": scene.exposure,
    "gamma": scene.gamma,
    "noise_std": scene.noise_std,
    "inspiration": scene.inspiration,
    "heart_width_ratio": scene.heart_width_ratio,
    "mediastinum_width": scene.mediastinum_width,
    "effusion_level_left": scene.effusion_left,
    "effusion_level_right": scene.effusion_right,
    "opacity_count": len(scene.patches),
    "opacity_area": sum(2 * np.pi * p.sigma**2 for p in scene.patches) / lung_area,
    "opacity_density": max([p.density for p in scene.patches], default=0.0),
    "atelectasis_length": sum(length for _, length in scene.atelectasis),
    "edema_severity": scene.edema,
    "nodule_size": scene.nodule_radius,
    "fracture_displacement": scene.fracture_displacement,
    "pneumothorax_size": scene.pneumothorax_size,
    "pleural_thickening": scene.pleural_thickening,
    "device_count": len(scene.devices),
    "pacemaker": float("pacemaker" in scene.devices),
  }
  assert tuple(values) == ATTRIBUTE_NAMES
  return {k: np.float32(v) for k, v in values.items()}


def sample_truth(rng: np.random.Generator) -> tuple[dict[str, TruthState], tuple[str, ...]]:
  """Samples each pathology's ``TruthState`` and the disease profiles of the study.

  Returns ({pathology: state} for the 13 pathologies, profile names; empty when normal).
  """
  truth = {p: TruthState.ABSENT for p in PATHOLOGIES}
  if rng.random() < P_NORMAL:
    return truth, ()
  names = list(PROFILES)
  probs = np.array([PROFILES[n][0] for n in names])
  chosen = [n for n, p in zip(names, probs) if rng.random() < p]
  if not chosen:
    chosen = [names[int(np.searchsorted(np.cumsum(probs) / probs.sum(), rng.random()))]]
  drawn = set()
  for name in chosen:
    for pathology, p in PROFILES[name][1].items():
      if rng.random() < p:
        drawn.add(pathology)
  for pathology, p in BACKGROUND.items():
    if rng.random() < p:
      drawn.add(pathology)
  if not drawn:  # an abnormal study has at least its profile's leading finding
    drawn.add(next(iter(PROFILES[chosen[0]][1])))
  for pathology in PATHOLOGIES:
    if pathology in drawn:
      hedgeable = pathology != "Support Devices"
      truth[pathology] = (
        TruthState.EQUIVOCAL if hedgeable and rng.random() < P_EQUIVOCAL else TruthState.PRESENT
      )
    elif pathology in DOUBT_ELIGIBLE and rng.random() < P_DOUBT:
      truth[pathology] = TruthState.DOUBT
  return truth, tuple(chosen)


def _uniform(rng, lo: float, hi: float) -> float:
  return lo + (hi - lo) * rng.random()


def _normal(rng, mean: float, std: float, lo: float, hi: float) -> float:
  """A normal draw clipped to [lo, hi]."""
  return min(hi, max(lo, mean + std * rng.standard_normal()))


def _severity(
  rng, state: TruthState, present: tuple[float, float], equivocal: tuple[float, float]
) -> float:
  """A severity from ``present`` or ``equivocal`` (uniform ranges); 0 when not drawn."""
  if state == TruthState.PRESENT:
    return _uniform(rng, *present)
  if state == TruthState.EQUIVOCAL:
    return _uniform(rng, *equivocal)
  return 0.0


def _side(rng) -> int:
  return 1 if rng.random() < 0.5 else -1


def _lung_point(rng, zones=("upper", "middle", "lower")) -> tuple[int, float, float, float]:
  """(side, x_rel, y, depth) of a random point inside a lung, in one of ``zones``."""
  ranges = {"upper": (-0.6, -0.32), "middle": (-0.28, 0.03), "lower": (0.07, 0.3)}
  zone = zones[int(rng.random() * len(zones))]
  lo, hi = ranges[zone]
  u = rng.random(3)
  y = lo + (hi - lo) * float(u[0])
  # The lungs narrow towards the apex; keep the point off the mediastinum and the chest wall.
  x_rel = 0.4 + (0.42 if y > -0.35 else 0.3) * float(u[1])
  return _side(rng), x_rel, y, -0.45 + 0.9 * float(u[2])


def sample_scene(
  truth: dict[str, TruthState], profiles: tuple[str, ...], rng: np.random.Generator
) -> Scene:
  """Samples the patient (nuisance) and the geometry of every drawn finding."""
  state = truth.get
  # 1. Patient and acquisition.
  patient = dict(
    body_scale=_normal(rng, 1.0, 0.05, 0.88, 1.12),
    body_width=_normal(rng, 1.0, 0.06, 0.85, 1.15),
    body_depth=_normal(rng, 1.0, 0.07, 0.82, 1.2),
    inspiration=_normal(rng, 1.0, 0.04, 0.9, 1.1),
    rotation_frontal=_normal(rng, 0.0, 3.0, -8.0, 8.0),
    rotation_lateral=_normal(rng, 0.0, 3.0, -8.0, 8.0),
    shift_frontal=(_normal(rng, 0.0, 0.03, -0.1, 0.1), _normal(rng, 0.0, 0.03, -0.1, 0.1)),
    shift_lateral=(_normal(rng, 0.0, 0.03, -0.1, 0.1), _normal(rng, 0.0, 0.03, -0.1, 0.1)),
    exposure=_uniform(rng, 0.95, 1.45),
    gamma=_uniform(rng, 0.85, 1.2),
    noise_std=_uniform(rng, 0.01, 0.035),
  )
  # 2. Heart and mediastinum.
  heart = _severity(rng, state("Cardiomegaly"), (0.55, 0.68), (0.51, 0.55))
  if not heart:
    heart = _normal(rng, 0.44, 0.025, 0.37, 0.49)
  mediastinum = _severity(rng, state("Enlarged Cardiomediastinum"), (0.36, 0.46), (0.31, 0.35))
  if not mediastinum:
    mediastinum = _normal(rng, 0.24, 0.02, 0.19, 0.29)
  # 3. Pleura: effusion (bilateral mostly with heart failure), pneumothorax, thickening.
  level = _severity(rng, state("Pleural Effusion"), (0.05, 0.35), (0.03, 0.07))
  effusion = {-1: 0.0, 1: 0.0}
  if level:
    p_bilateral = 0.55 if "cardiac" in profiles else 0.2
    first = _side(rng)
    effusion[first] = level
    if rng.random() < p_bilateral:
      effusion[-first] = level * _uniform(rng, 0.5, 1.0)
  pneumothorax = _severity(rng, state("Pneumothorax"), (0.2, 0.4), (0.1, 0.15))
  pleural = _severity(rng, state("Pleural Other"), (0.05, 0.08), (0.03, 0.04))
  # 4. Airspace opacities; consolidation sits where the pneumonia is.
  patches = []
  density = {
    "opacity": ((0.3, 0.45), (0.15, 0.25)),
    "pneumonia": ((0.4, 0.6), (0.2, 0.3)),
    "consolidation": ((0.6, 0.8), (0.3, 0.4)),
  }
  sizes = {"opacity": (0.06, 0.1), "pneumonia": (0.08, 0.12), "consolidation": (0.09, 0.13)}
  for kind, label in (
    ("pneumonia", "Pneumonia"),
    ("consolidation", "Consolidation"),
    ("opacity", "Lung Opacity"),
  ):
    s = state(label)
    if not s.drawn:
      continue
    count = 1 if s == TruthState.EQUIVOCAL or kind == "consolidation" else 1 + (rng.random() < 0.5)
    for _ in range(count):
      zones = ("middle", "lower") if kind == "pneumonia" else ("upper", "middle", "lower")
      side, x_rel, y, depth = _lung_point(rng, zones)
      if kind == "consolidation" and patches:
        first = patches[0]
        side, x_rel, y, depth = first.side, first.x_rel, first.y, first.depth
      patches.append(
        Patch(
          kind=kind,
          side=side,
          x_rel=x_rel,
          y=y,
          depth=depth,
          sigma=_uniform(rng, *sizes[kind]),
          density=_severity(rng, s, *density[kind]),
        )
      )
  # 5. Atelectasis bands at the bases; edema; nodule; fracture.
  length = _severity(rng, state("Atelectasis"), (0.2, 0.32), (0.12, 0.17))
  atelectasis = ()
  if length:
    sides = (-1, 1) if rng.random() < 0.3 else (_side(rng),)
    atelectasis = tuple((s, length * _uniform(rng, 0.8, 1.0)) for s in sides)
  edema = _severity(rng, state("Edema"), (0.3, 0.55), (0.15, 0.25))
  nodule = _severity(rng, state("Lung Lesion"), (0.045, 0.11), (0.035, 0.045))
  nodule_side, nodule_x, nodule_y, nodule_depth = _lung_point(rng)
  fracture = _severity(rng, state("Fracture"), (0.35, 0.5), (0.2, 0.3))
  # 6. Support devices by profile.
  devices = ()
  if state("Support Devices").drawn:
    if "critical_care" in profiles:
      p = {"ett": 0.7, "cvc": 0.7, "ng": 0.6, "pacemaker": 0.05, "sternal_wires": 0.1}
    elif "cardiac" in profiles:
      p = {"ett": 0.05, "cvc": 0.3, "ng": 0.05, "pacemaker": 0.6, "sternal_wires": 0.35}
    else:
      p = {"ett": 0.1, "cvc": 0.45, "ng": 0.15, "pacemaker": 0.3, "sternal_wires": 0.15}
    devices = tuple(d for d in DEVICES if rng.random() < p[d])
    if not devices:
      devices = (DEVICES[int(rng.random() * len(DEVICES))],)
  return Scene(
    **patient,
    heart_width_ratio=heart,
    mediastinum_width=mediastinum,
    effusion_right=effusion[-1],
    effusion_left=effusion[1],
    patches=tuple(patches),
    atelectasis=atelectasis,
    edema=edema,
    nodule_radius=nodule,
    nodule_side=nodule_side,
    nodule_x_rel=nodule_x,
    nodule_y=nodule_y,
    nodule_depth=nodule_depth,
    fracture_displacement=fracture,
    fracture_side=_side(rng),
    fracture_rib=3 + int(rng.random() * 4),
    fracture_x_rel=_uniform(rng, 0.65, 0.9),
    pneumothorax_size=pneumothorax,
    pneumothorax_side=_side(rng),
    pleural_thickening=pleural,
    pleural_side=_side(rng),
    devices=devices,
    line_side=_side(rng),
  )
