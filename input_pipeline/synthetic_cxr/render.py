"""Vectorized numpy rendering of the frontal (PA) and lateral views of a ``Scene``.

Each view is an attenuation map ``D`` (a density summed along the ray) drawn on the grid of
body coordinates of the pixel centres (the patient's pose: zoom, rotation, shift): soft tissue of
the body, lungs that take density away (air), heart and mediastinum that put it back, bones,
pathology "fills" that replace lung air (effusion, opacities, nodule, ...) and radiopaque
devices. Shapes are signed-distance masks with one-pixel soft edges (anti-aliased). Everything
but the body is drawn only inside its bounding window (the thorax, a nodule, a line), which
keeps a 64 px study around a millisecond per view. The picture is ``1 - exp(-exposure * D)``
with a gamma, a 3x3 binomial blur and Gaussian noise, stored as uint8.

What each finding looks like (frontal / lateral):
  Cardiomegaly               wider heart / heart reaching further back
  Enlarged Cardiomediastinum wider superior mediastinum / filled retrosternal space
  Pleural Effusion           basal fluid with a lateral meniscus, hidden while small / fluid
                             in the posterior costophrenic angle, visible even when small
  Lung Opacity, Pneumonia, Consolidation   bright (textured, dense) patches / fainter patches
  Atelectasis                plate-like band at a base, the dome raised / band at the base
  Edema                      perihilar haze on both sides / haze around the hilum
  Lung Lesion                round nodule / only when large (``LATERAL_MIN_NODULE``)
  Fracture                   a rib with a step, a gap and a callus / not visible
  Pneumothorax               lucent rim without lung markings, visceral pleural line / not
                             visible
  Pleural Other              pleural band along the lateral chest wall / posterior band
  Support Devices            tubes and lines (thin bright lines), pacemaker box and leads,
                             sternotomy wires / the same from the side
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import numpy as np

from input_pipeline.synthetic_cxr import scene as scene_lib

AIR = 0.72  # density the lung air takes away
LINE = 0.016  # half-width of a tube or line (body units; a 64 px pixel is 0.031)
_F32 = np.float32
_ZERO, _ONE = _F32(0), _F32(1)


class _Grid(NamedTuple):
  """Body coordinates of the pixel centres of a (window of the) view, and the view's pose."""

  x: np.ndarray  # [H, W]
  y: np.ndarray  # [H, W]
  pw: float  # pixel width in body units
  size: int  # of the whole view
  scale: float
  cos: float
  sin: float
  shift: tuple[float, float]
  row0: int = 0  # where this window starts in the view
  col0: int = 0


def _grid(size: int, scale: float, rotation_deg: float, shift: tuple[float, float]) -> _Grid:
  u = (np.arange(size, dtype=_F32) + 0.5) / size * 2 - 1
  px, py = u - _F32(shift[0]), u - _F32(shift[1])
  t = math.radians(rotation_deg)
  c, s = math.cos(t), math.sin(t)
  x = (_F32(c / scale) * px)[None, :] + (_F32(s / scale) * py)[:, None]
  y = (_F32(c / scale) * py)[:, None] - (_F32(s / scale) * px)[None, :]
  return _Grid(x, y, 2.0 / size / scale, size, scale, c, s, shift)


def _window(g: _Grid, x0: float, x1: float, y0: float, y1: float):
  """(row slice, column slice) of ``g``'s arrays that see the body box [x0, x1] x [y0, y1]."""
  bx, by = (x0 + x1) / 2, (y0 + y1) / 2  # box centre and half extents, in body units
  hx, hy = (x1 - x0) / 2, (y1 - y0) / 2
  c, s, k = g.cos, g.sin, g.scale * g.size / 2  # k: pixels per body unit
  col = (g.scale * (c * bx - s * by) + g.shift[0] + 1) * g.size / 2 - 0.5
  row = (g.scale * (s * bx + c * by) + g.shift[1] + 1) * g.size / 2 - 0.5
  half_cols = k * (abs(c) * hx + abs(s) * hy) + 1.5
  half_rows = k * (abs(s) * hx + abs(c) * hy) + 1.5
  h, w = g.x.shape
  c0 = max(0, int(col - half_cols) - g.col0)
  c1 = min(w, int(col + half_cols) + 2 - g.col0)
  r0 = max(0, int(row - half_rows) - g.row0)
  r1 = min(h, int(row + half_rows) + 2 - g.row0)
  if c0 >= c1 or r0 >= r1:
    return None
  return slice(r0, r1), slice(c0, c1)


def _subgrid(g: _Grid, box) -> _Grid | None:
  win = _window(g, *box)
  if win is None:
    return None
  return g._replace(x=g.x[win], y=g.y[win], row0=g.row0 + win[0].start, col0=g.col0 + win[1].start)


def _paint(
  target: np.ndarray, g: _Grid, box, fn: Callable, weight: float = 1.0, combine: str = "add"
) -> None:
  """target[window] += weight * fn(x, y) (or max-composited) inside the window of ``box``."""
  win = _window(g, *box)
  if win is None:
    return
  values = fn(g.x[win], g.y[win])
  if weight != 1.0:
    values *= _F32(weight)
  if combine == "add":
    target[win] += values
  else:
    np.maximum(target[win], values, out=target[win])


def _clip(v: np.ndarray, lo, hi) -> np.ndarray:
  """Clips ``v`` in place (two ufuncs: cheaper than np.clip's dispatch on small arrays)."""
  np.minimum(v, _F32(hi), out=v)
  return np.maximum(v, _F32(lo), out=v)


def _soft(sd: np.ndarray, pw: float) -> np.ndarray:
  """Coverage of a pixel by the region {sd < 0}, with a one-pixel anti-aliased edge."""
  v = sd * _F32(-1.0 / pw)
  v += _F32(0.5)
  return _clip(v, 0, 1)


def _ellipse(x, y, cx, cy, a, b):
  """Approximate signed distance to an axis-aligned ellipse (negative inside)."""
  u = (x - _F32(cx)) * _F32(1 / a)
  v = (y - _F32(cy)) * _F32(1 / b)
  u *= u
  v *= v
  u += v
  r = np.sqrt(u, out=u)
  r -= _ONE
  r *= _F32(min(a, b))
  return r


def _superellipse(x, y, cx, cy, a, b):
  """Approximate signed distance to a rounded rectangle |u|^4 + |v|^4 = 1."""
  u = (x - _F32(cx)) * _F32(1 / a)
  v = (y - _F32(cy)) * _F32(1 / b)
  u *= u
  v *= v
  u *= u
  v *= v
  u += v
  r = np.sqrt(np.sqrt(u, out=u), out=u)
  r -= _ONE
  r *= _F32(min(a, b))
  return r


def _segment(x, y, p0, p1):
  """Distance to the segment p0-p1."""
  dx, dy = p1[0] - p0[0], p1[1] - p0[1]
  rx, ry = x - _F32(p0[0]), y - _F32(p0[1])
  t = _clip((rx * _F32(dx) + ry * _F32(dy)) * _F32(1 / (dx * dx + dy * dy)), 0, 1)
  rx -= t * _F32(dx)
  ry -= t * _F32(dy)
  return np.sqrt(rx * rx + ry * ry)


def _gauss(x, y, cx, cy, sx, sy):
  u = (x - _F32(cx)) * _F32(1 / sx)
  v = (y - _F32(cy)) * _F32(1 / sy)
  u *= u
  v *= v
  u += v
  u *= _F32(-0.5)
  return np.exp(u, out=u)


def _draw_line(layer: np.ndarray, g: _Grid, points, half_width: float = LINE) -> None:
  """Max-composites a polyline of the given half-width into ``layer``."""
  r = half_width + 2 * g.pw
  for p, q in zip(points, points[1:]):
    box = (min(p[0], q[0]) - r, max(p[0], q[0]) + r, min(p[1], q[1]) - r, max(p[1], q[1]) + r)
    _paint(
      layer,
      g,
      box,
      lambda x, y, p=p, q=q: _soft(_segment(x, y, p, q) - _F32(half_width), g.pw),
      combine="max",
    )


def _draw_disc(target: np.ndarray, g: _Grid, cx: float, cy: float, r: float, weight: float) -> None:
  m = r + 2 * g.pw
  _paint(
    target,
    g,
    (cx - m, cx + m, cy - m, cy + m),
    lambda x, y: _soft(np.sqrt((x - _F32(cx)) ** 2 + (y - _F32(cy)) ** 2) - _F32(r), g.pw),
    weight,
  )


def _draw_band(
  target: np.ndarray,
  g: _Grid,
  cx: float,
  cy: float,
  half_length: float,
  half_width: float,
  angle_deg: float,
  weight: float,
) -> None:
  """A tilted elliptical band (plate-like atelectasis)."""
  c, s = _F32(math.cos(math.radians(angle_deg))), _F32(math.sin(math.radians(angle_deg)))

  def band(x, y):
    u, v = x - _F32(cx), y - _F32(cy)
    return _soft(_ellipse(c * u + s * v, c * v - s * u, 0, 0, half_length, half_width), g.pw)

  m = half_length + 2 * g.pw
  _paint(target, g, (cx - m, cx + m, cy - m, cy + m), band, weight)


def _draw_blob(
  target: np.ndarray,
  g: _Grid,
  cx: float,
  cy: float,
  sx: float,
  sy: float,
  weight: float,
  shape: Callable | None = None,
) -> None:
  """Adds weight * a Gaussian blob (optionally reshaped by ``shape(blob, x, y)``)."""
  box = (cx - 3 * sx, cx + 3 * sx, cy - 3 * sy, cy + 3 * sy)
  fn = lambda x, y: _gauss(x, y, cx, cy, sx, sy)
  if shape is not None:
    fn = lambda x, y: shape(_gauss(x, y, cx, cy, sx, sy), x, y)
  _paint(target, g, box, fn, weight)


@functools.lru_cache(maxsize=64)
def _upsampler(size: int, cells: int) -> np.ndarray:
  """Linear interpolation matrix [size, cells] from a cells-point grid to size pixels."""
  pos = (np.arange(size) + 0.5) / size * (cells - 1)
  lo = np.clip(np.floor(pos).astype(int), 0, cells - 2)
  frac = pos - lo
  w = np.zeros((size, cells), _F32)
  w[np.arange(size), lo] = 1 - frac
  w[np.arange(size), lo + 1] += frac
  return w


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
  """Zero-mean unit-scale noise of ``shape``, smooth over about 1/cells of the side."""
  return (
    _upsampler(shape[0], cells)
    @ rng.standard_normal((cells, cells), dtype=_F32)
    @ _upsampler(shape[1], cells).T
  )


def _blur(img: np.ndarray) -> np.ndarray:
  """3x3 binomial blur (1 2 1 / 4 along each axis), edges replicated."""
  h = img * _F32(2)
  h[:, 1:] += img[:, :-1]
  h[:, :1] += img[:, :1]
  h[:, :-1] += img[:, 1:]
  h[:, -1:] += img[:, -1:]
  v = h * _F32(2 / 16)
  v[1:] += h[:-1] * _F32(1 / 16)
  v[:1] += h[:1] * _F32(1 / 16)
  v[:-1] += h[1:] * _F32(1 / 16)
  v[-1:] += h[-1:] * _F32(1 / 16)
  return v


def _to_uint8(density: np.ndarray, scene: scene_lib.Scene, rng: np.random.Generator) -> np.ndarray:
  """Film response, blur and (uniform) noise: density [S, S] -> uint8 [S, S, 1]."""
  np.maximum(density, _ZERO, out=density)
  density *= _F32(-scene.exposure)
  img = np.expm1(density, out=density)
  img *= -_ONE
  img = _blur(np.power(img, _F32(scene.gamma), out=img))
  noise = rng.random(img.shape, dtype=_F32)  # uniform: cheaper to draw than Gaussian
  noise -= _F32(0.5)
  noise *= _F32(scene.noise_std * math.sqrt(12))  # standard deviation noise_std
  img += noise
  img += _F32(0.3 * scene.noise_std) * _smooth_noise(rng, img.shape, 6)
  img *= _F32(255)
  img += _F32(0.5)
  return _clip(img, 0, 255).astype(np.uint8)[..., None]


def _dome_base(scene: scene_lib.Scene, side: int) -> float:
  """Height of the costophrenic angle on ``side``; atelectasis raises the dome."""
  base = scene_lib.LUNG_APEX + scene_lib.LUNG_HEIGHT * scene.inspiration
  base += 0.04 if side > 0 else 0.0
  if any(s == side for s, _ in scene.atelectasis):
    base -= 0.05
  return base


def _dome_peak(scene: scene_lib.Scene, side: int) -> float:
  return _dome_base(scene, side) - 0.16 * scene.inspiration


def render_frontal(scene: scene_lib.Scene, size: int, rng: np.random.Generator) -> np.ndarray:
  """The PA view of ``scene``: uint8 [size, size, 1]. ``rng`` draws the texture and noise."""
  g = _grid(size, scene.body_scale, scene.rotation_frontal, scene.shift_frontal)
  t = scene.thorax_half_width

  # 1. Body: trunk (a rounded rectangle) and neck; thicker in the middle.
  bw = t + 0.15
  trunk = _superellipse(g.x, g.y, 0.0, 0.28, bw, 1.18)
  neck = np.abs(g.x)
  neck -= _F32(0.2)
  np.maximum(neck, g.y + _F32(0.55), out=neck)
  density = _soft(np.minimum(trunk, neck, out=trunk), g.pw)
  profile = (g.x * _F32(1 / bw)) ** 2
  np.subtract(_ONE, profile, out=profile)
  np.maximum(profile, _ZERO, out=profile)
  profile = np.sqrt(profile, out=profile)
  profile *= _F32(0.4)
  profile += _F32(0.6)
  density *= profile

  # 2. The thorax: lungs, heart, mediastinum, fills, markings, ribs.
  base = max(_dome_base(scene, -1), _dome_base(scene, 1))
  thorax = _subgrid(g, (-t - 0.06, t + 0.06, scene_lib.LUNG_APEX - 0.08, base + 0.2))
  if thorax is not None:
    win = (
      slice(thorax.row0, thorax.row0 + thorax.x.shape[0]),
      slice(thorax.col0, thorax.col0 + thorax.x.shape[1]),
    )
    density[win] += _frontal_thorax(scene, thorax, rng)

  # 3. Air outside the lungs: trachea and stomach bubble.
  _paint(
    density,
    g,
    (-0.06, 0.06, -1.0, -0.28),
    lambda x, y: _soft(
      np.maximum(np.abs(x) - _F32(0.035), np.abs(y + _F32(0.63)) - _F32(0.33)), g.pw
    ),
    -0.22,
  )
  bubble_y = _dome_peak(scene, 1) + 0.1
  _paint(
    density,
    g,
    (0.45 * t - 0.12, 0.45 * t + 0.12, bubble_y - 0.07, bubble_y + 0.07),
    lambda x, y: _soft(_ellipse(x, y, 0.45 * t, bubble_y, 0.1, 0.045), g.pw),
    -0.35,
  )

  # 4. Spine and clavicles.
  _paint(density, g, (-0.1, 0.1, -1.2, 1.2), lambda x, y: _soft(np.abs(x) - _F32(0.06), g.pw), 0.2)
  slope = -0.14 / (1.1 * t - 0.05)

  def clavicles(x, y):
    ax = np.abs(x)
    sd = np.abs(y - (_F32(-0.72 - 0.05 * slope) + _F32(slope) * ax))
    sd -= _F32(0.028)
    np.maximum(sd, _F32(0.05) - ax, out=sd)
    np.maximum(sd, ax - _F32(1.1 * t), out=sd)
    return _soft(sd, g.pw)

  _paint(density, g, (-1.1 * t - 0.03, 1.1 * t + 0.03, -0.92, -0.66), clavicles, 0.3)

  # 5. Support devices: radiopaque lines, tubes, a pacemaker box and sternotomy wires.
  if scene.devices:
    density += _F32(0.9) * _frontal_devices(g, scene, t)
  return _to_uint8(density, scene, rng)


def _frontal_thorax(scene: scene_lib.Scene, g: _Grid, rng: np.random.Generator) -> np.ndarray:
  """Density change [H, W] of the thorax window ``g`` of the frontal view."""
  x, y, pw = g.x, g.y, g.pw
  t = scene.thorax_half_width
  insp = scene.inspiration
  apex = scene_lib.LUNG_APEX
  ax = np.abs(x)
  right = x < 0
  base_r, base_l = _dome_base(scene, -1), _dome_base(scene, 1)

  # Heart on the diaphragm; superior mediastinum with the aortic knob.
  heart_a = scene.heart_width_ratio * t
  heart_cy = _dome_peak(scene, 1) + 0.03
  cardiomed = _ellipse(x, y, 0.3 * heart_a - 0.02, heart_cy, heart_a, 0.36)
  med_half = scene.mediastinum_width * t
  mediastinum = np.abs(x - _F32(0.01))
  mediastinum -= _F32(med_half)
  np.maximum(mediastinum, y - _F32(heart_cy), out=mediastinum)
  np.minimum(cardiomed, mediastinum, out=cardiomed)
  np.minimum(cardiomed, _ellipse(x, y, 0.01 + med_half - 0.03, -0.36, 0.075, 0.065), out=cardiomed)
  cardiomed = _soft(cardiomed, pw)

  # Both lungs at once (mirror images) above the diaphragm domes.
  cy, a, b = apex + insp, 0.5 * t, insp
  outline = _ellipse(ax, y, a, cy, a, b)
  u = (ax - _F32(0.45 * t)) * _F32(1 / (0.62 * t))
  u *= u
  u -= _ONE
  u *= _F32(0.16 * insp)
  dome = np.where(right, _F32(base_r), _F32(base_l))
  dome += u  # the dome's height at x
  lung = _soft(np.maximum(outline, y - dome), pw)
  lateral = np.minimum(ax * _F32(1 / t), _ONE)  # 0 medial .. 1 at the chest wall

  fill = np.zeros_like(x)
  fluid = np.zeros_like(x)
  ptx = None
  for side, base, level in ((-1, base_r, scene.effusion_right), (1, base_l, scene.effusion_left)):
    on_side = ~right if side > 0 else right
    # Effusion: fluid from the base up to a meniscus that climbs laterally.
    height = max(0.0, level - scene_lib.FRONTAL_HIDDEN_EFFUSION) * scene_lib.LUNG_HEIGHT * insp
    if height > 0:
      top = _F32(base - 0.03 - height) - _F32(0.8 * height) * lateral * lateral
      fluid += (
        _soft(np.maximum(outline, top - y), 2 * pw) * _soft(y - _F32(base + 0.12), pw) * on_side
      )
    # Pleural thickening: a band along the lateral chest wall.
    if scene.pleural_thickening and side == scene.pleural_side:
      band = np.maximum(np.maximum(outline, -outline - _F32(scene.pleural_thickening)), y - dome)
      fill += _soft(band, pw) * _clip((lateral - _F32(0.25)) * _F32(5), 0, 1) * on_side
    # Pneumothorax: the lung edge retracts towards the hilum; no markings outside it.
    if scene.pneumothorax_size and side == scene.pneumothorax_side:
      k = scene.pneumothorax_size
      collapsed = _ellipse(ax, y, a * (1 - k), cy + 0.35 * k, a * (1 - k), b * (1 - 0.45 * k))
      ptx = lung * (_ONE - _soft(collapsed, pw)) * on_side
      edge = collapsed * _F32(1 / max(0.012, 0.6 * pw))
      fill += lung * _F32(0.5) * np.exp(-edge * edge) * on_side
  lung *= _ONE - cardiomed

  for p in scene.patches:
    shape = None
    if p.kind == "consolidation":  # dense, bounded above by a fissure
      top = p.y - 0.9 * p.sigma
      shape = lambda blob, x, y, top=top: (
        np.minimum(blob * _F32(1.6), _ONE) * _soft(_F32(top) - y, 0.02)
      )
    elif p.kind == "pneumonia":  # patchy
      shape = lambda blob, x, y: (
        blob * _clip(1 + _F32(1.2) * _blur(rng.standard_normal(blob.shape, dtype=_F32)), 0, 2)
      )
    _draw_blob(fill, g, p.side * p.x_rel * t, p.y, p.sigma, 0.8 * p.sigma, p.density, shape)
  for side, length in scene.atelectasis:
    _draw_band(
      fill, g, side * 0.5 * t, _dome_peak(scene, side) - 0.08, length / 2, 0.04, 8 * side, 0.85
    )
  if scene.edema:
    haze = _gauss(ax, y, 0.32 * t, -0.08, 0.16, 0.24)
    haze += _F32(0.35) * _gauss(ax, y, 0.5 * t, 0.1, 0.3, 0.3)
    haze *= _clip(1 + _F32(0.4) * _smooth_noise(rng, x.shape, 16), 0, 2)
    fill += _F32(scene.edema) * haze
  if scene.nodule_radius:
    _draw_disc(
      fill, g, scene.nodule_side * scene.nodule_x_rel * t, scene.nodule_y, scene.nodule_radius, 0.95
    )
  fill += fluid
  _clip(fill, 0, 1)

  # Lung markings: vessels fanning out of the hila, fading to the periphery.
  hx = ax - _F32(0.28 * t)
  hy = y + _F32(0.1)
  r_hilum = np.sqrt(hx * hx + hy * hy)
  markings = np.exp(r_hilum * _F32(-1 / 0.35))
  markings *= _F32(0.09) + _F32(0.07) * _smooth_noise(rng, x.shape, 14)
  r_hilum *= _F32(1 / 0.07)
  markings += _F32(0.16) * np.exp(-r_hilum * r_hilum)
  if ptx is not None:
    markings *= _ONE - ptx
    markings -= _F32(0.28) * ptx
  markings -= _F32(AIR)
  clear = lung * (_ONE - fill)
  change = markings * clear
  change += _F32(0.12) * fluid * lung  # fluid is denser than the soft tissue it replaces

  # Ribs: arcs sloping down laterally, over the lungs; a fracture breaks one.
  phase = lateral * lateral
  phase *= _F32(-0.22)
  phase -= _F32(0.08) * lateral
  phase += y
  phase += _F32(0.85)
  phase *= _F32(1 / (0.155 * insp))
  if scene.fracture_displacement:
    fx = scene.fracture_x_rel
    near = np.exp(-(((phase - _F32(scene.fracture_rib)) * _F32(1 / 0.45)) ** 2))
    near *= (x * _F32(scene.fracture_side)) > 0
    phase += _F32(scene.fracture_displacement) * near * _soft(_F32(fx) - lateral, pw / t)
  ribs = np.cos(phase * _F32(2 * np.pi), out=phase)
  ribs -= _F32(0.5)
  ribs *= _F32(2)
  _clip(ribs, 0, 1)
  if scene.fracture_displacement:
    across = (lateral - _F32(fx)) * _F32(t)
    ribs *= _ONE - near * np.exp(-((across * _F32(1 / max(0.02, 0.6 * pw))) ** 2))
  ribs *= _soft(np.maximum(_ellipse(ax, y, 0, cy, 1.04 * t, 1.06 * insp), y - dome), pw)
  change += _F32(0.08) * ribs
  if scene.fracture_displacement:  # callus at the break
    fx = scene.fracture_x_rel
    fy = scene.fracture_rib * 0.155 * insp - 0.85 + 0.22 * fx * fx + 0.08 * fx
    _draw_blob(
      change, g, scene.fracture_side * fx * t, fy, 0.035, 0.03, 0.6 * scene.fracture_displacement
    )
  return change


def _frontal_devices(g: _Grid, scene: scene_lib.Scene, t: float) -> np.ndarray:
  """Coverage [S, S] of the support devices in the frontal view."""
  layer = np.zeros_like(g.x)
  s = scene.line_side
  stomach = _dome_peak(scene, 1)
  if "ett" in scene.devices:
    _draw_line(layer, g, [(0.0, -1.1), (0.0, -0.42)])
  if "cvc" in scene.devices:
    _draw_line(layer, g, [(s * 0.6, -1.0), (s * 0.25, -0.72), (-0.08, -0.55), (-0.08, -0.2)])
  if "ng" in scene.devices:
    _draw_line(layer, g, [(0.0, -1.1), (0.03, -0.3), (0.06, stomach), (0.42 * t, stomach + 0.16)])
  if "pacemaker" in scene.devices:
    bx, by = s * 0.85 * t, -0.62
    _paint(
      layer,
      g,
      (bx - 0.1, bx + 0.1, by - 0.07, by + 0.07),
      lambda x, y: _soft(
        np.maximum(np.abs(x - _F32(bx)) - _F32(0.08), np.abs(y - _F32(by)) - _F32(0.05)), g.pw
      ),
      combine="max",
    )
    _draw_line(layer, g, [(bx, by), (s * 0.25, -0.5), (-0.06, -0.2), (0.02, 0.15)], 0.8 * LINE)
    _draw_line(layer, g, [(bx, by), (s * 0.25, -0.47), (-0.04, -0.18), (0.12, 0.25)], 0.8 * LINE)
  if "sternal_wires" in scene.devices:
    for wy in (-0.5, -0.35, -0.2, -0.05):
      _paint(
        layer,
        g,
        (-0.06, 0.06, wy - 0.05, wy + 0.05),
        lambda x, y, wy=wy: _soft(
          np.abs(np.sqrt(x * x * _F32(0.4) + (y - _F32(wy)) ** 2) - _F32(0.025)) - _F32(0.01), g.pw
        ),
        combine="max",
      )
  return layer


def render_lateral(scene: scene_lib.Scene, size: int, rng: np.random.Generator) -> np.ndarray:
  """The lateral view of ``scene`` (anterior on the image left): uint8 [size, size, 1]."""
  g = _grid(size, scene.body_scale, scene.rotation_lateral, scene.shift_lateral)
  d = scene.body_depth
  insp = scene.inspiration
  peak = scene_lib.LUNG_APEX + scene_lib.LUNG_HEIGHT * insp - 0.16 * insp

  # 1. Body seen from the side (thick: the whole chest width is in the ray) and the neck.
  front, back = -0.66 * d, 0.78 * d
  trunk = _superellipse(g.x, g.y, (front + back) / 2, 0.25, (back - front) / 2, 1.2)
  neck = np.abs(g.x - _F32(0.1))
  neck -= _F32(0.24)
  np.maximum(neck, g.y + _F32(0.6), out=neck)
  body = _soft(np.minimum(trunk, neck, out=trunk), g.pw)
  profile = ((g.x - _F32((front + back) / 2)) * _F32(2 / (back - front))) ** 2
  np.subtract(_ONE, profile, out=profile)
  np.maximum(profile, _ZERO, out=profile)
  profile = np.sqrt(profile, out=profile)
  profile *= _F32(0.25)
  profile += _F32(0.8)
  density = body * profile

  # 2. The thorax: lungs, heart, aorta, fills, markings, ribs, sternum.
  thorax = _subgrid(g, (-0.55 * d, 0.62 * d, scene_lib.LUNG_APEX - 0.08, peak + 0.5))
  if thorax is not None:
    win = (
      slice(thorax.row0, thorax.row0 + thorax.x.shape[0]),
      slice(thorax.col0, thorax.col0 + thorax.x.shape[1]),
    )
    density[win] += _lateral_thorax(scene, thorax, peak, rng)

  # 3. Trachea; spine with vertebral bodies and discs, posterior elements; sternum.
  def oblique_band(z0: float, slope: float, half_width: float, y0: float, y1: float):
    """A straight band z = z0 + slope * y between the heights y0 and y1."""

    def band(z, y):
      sd = np.abs(z - (_F32(z0) + _F32(slope) * y))
      sd -= _F32(half_width)
      return _soft(np.maximum(sd, np.abs(y - _F32((y0 + y1) / 2)) - _F32((y1 - y0) / 2)), g.pw)

    lo, hi = sorted((z0 + slope * y0, z0 + slope * y1))
    return (lo - half_width - 0.05, hi + half_width + 0.05, y0 - 0.05, y1 + 0.05), band

  _paint(density, g, *oblique_band(0.1 + 0.125 * 0.3, 0.125, 0.035, -1.1, -0.3), -0.2)

  def spine(z, y):
    sy = y - _F32(0.1)
    dz = z - (_F32(0.5 * d) + _F32(0.04) * sy * sy)
    column = _soft(np.abs(dz) - _F32(0.08 * d), g.pw)
    discs = _clip(_F32(2.5) * np.cos(_F32(2 * np.pi / 0.15) * (y + _F32(0.02))), -1, 1)
    column *= _F32(0.32) + _F32(0.1) * discs
    column += _F32(0.1) * _soft(np.abs(dz - _F32(0.17 * d)) - _F32(0.05), g.pw)
    return column * _soft(-_F32(0.72) - y, 0.05)

  _paint(density, g, (0.3 * d, 0.85 * d, -0.75, 1.2), spine)
  slope = 0.03 * d / 0.74
  _paint(density, g, *oblique_band(-0.55 * d - 0.12 * slope, slope, 0.025, -0.62, 0.12), 0.28)
  density *= body

  # 4. Devices from the side.
  if scene.devices:
    density += _F32(0.9) * _lateral_devices(g, scene, d, peak)
  return _to_uint8(density, scene, rng)


def _lateral_thorax(
  scene: scene_lib.Scene, g: _Grid, peak: float, rng: np.random.Generator
) -> np.ndarray:
  """Density change [H, W] of the thorax window ``g`` of the lateral view."""
  z, y, pw = g.x, g.y, g.pw
  d = scene.body_depth
  insp = scene.inspiration

  # Both lungs superimposed above the diaphragm, deepest at the posterior sulcus.
  outline = _superellipse(z, y, 0.05, scene_lib.LUNG_APEX + insp, 0.5 * d, insp)
  u = (z + _F32(0.1)) * _F32(1 / (0.5 * d))
  post = _clip((z - _F32(0.2)) * _F32(1 / (0.35 * d)), 0, 1)
  diaphragm = _F32(0.06) * u * u
  diaphragm += _F32(0.16) * post * post
  diaphragm += _F32(peak + 0.05)
  lung = _soft(np.maximum(outline, y - diaphragm), pw)
  # Heart in front on the diaphragm (reaching back when enlarged), retrosternal space, aorta.
  heart_a = 0.26 * d * scene.heart_width_ratio / 0.44
  cardiomed = _ellipse(z, y, -0.45 * d + 0.9 * heart_a, peak + 0.05, heart_a, 0.34)
  widening = max(0.0, scene.mediastinum_width - 0.26)
  np.minimum(
    cardiomed, _ellipse(z, y, -0.45 * d + 0.02, -0.38, 0.03 + 0.8 * widening, 0.3), out=cardiomed
  )
  cardiomed = _soft(cardiomed, pw)
  # The aorta: an arch (a ring, upper half) going on down in front of the spine.
  arch = np.abs(_ellipse(z, y, 0.08, -0.3, 0.18, 0.2))
  np.maximum(arch, y + _F32(0.3), out=arch)
  descending = np.abs(z - _F32(0.26))
  np.maximum(descending, np.abs(y - _F32(0.1)) - _F32(0.4), out=descending)
  np.minimum(arch, descending, out=arch)
  arch -= _F32(0.045)
  np.maximum(cardiomed, _F32(0.15) * _soft(arch, pw), out=cardiomed)
  lung_air = lung * (_ONE - cardiomed)

  # Fills. Effusion gathers in the posterior costophrenic angle (meniscus rising back).
  fill = np.zeros_like(z)
  fluid = np.zeros_like(z)
  posterior_cp = peak + 0.05 + 0.06 * (0.6 / 0.5) ** 2 + 0.16
  back = _clip((z + _F32(0.2)) * _F32(1 / (0.7 * d)), 0, 1)
  for level in (scene.effusion_left, scene.effusion_right):
    if level > 0:
      # Upright, fluid gathers behind: the lateral shows more of it than the frontal.
      height = 2.5 * level * scene_lib.LUNG_HEIGHT * insp
      top = _F32(posterior_cp - 0.4 * height) - _F32(0.9 * height) * back
      fluid += _F32(0.85) * _soft(np.maximum(outline, top - y), 2 * pw)
  for p in scene.patches:
    _draw_blob(fill, g, 0.42 * d * p.depth, p.y, p.sigma, 0.8 * p.sigma, 0.7 * p.density)
  for _, length in scene.atelectasis:
    _draw_band(fill, g, 0.1, peak - 0.04, 0.8 * length, 0.028, -6, 0.5)
  if scene.edema:
    fill += _F32(scene.edema) * _gauss(z, y, 0.06, -0.08, 0.2, 0.26)
  if scene.nodule_radius > scene_lib.LATERAL_MIN_NODULE:
    _draw_disc(fill, g, 0.42 * d * scene.nodule_depth, scene.nodule_y, scene.nodule_radius, 0.7)
  if scene.pleural_thickening:
    band = np.maximum(
      np.maximum(outline, -outline - _F32(scene.pleural_thickening)), _F32(0.15) - z
    )
    fill += _F32(0.5) * _soft(np.maximum(band, y - diaphragm), pw)
  fill += fluid
  _clip(fill, 0, 1)

  hz, hy = z - _F32(0.08), y + _F32(0.1)
  r_hilum = np.sqrt(hz * hz + hy * hy)
  markings = np.exp(r_hilum * _F32(-1 / 0.35))
  markings *= _F32(0.08) + _F32(0.064) * _smooth_noise(rng, z.shape, 14)
  r_hilum *= _F32(1 / 0.08)
  markings += _F32(0.18) * np.exp(-r_hilum * r_hilum)
  markings -= _F32(AIR)
  change = markings * lung_air * (_ONE - fill)
  change += _F32(0.12) * fluid * lung
  ribs = np.cos(_F32(2 * np.pi / 0.2) * (y + _F32(0.35) * z))
  ribs -= _F32(0.6)
  ribs *= _F32(2.5)
  _clip(ribs, 0, 1)
  change += _F32(0.05) * ribs * lung
  return change


def _lateral_devices(g: _Grid, scene: scene_lib.Scene, d: float, peak: float) -> np.ndarray:
  """Coverage [S, S] of the support devices in the lateral view."""
  layer = np.zeros_like(g.x)
  if "ett" in scene.devices:
    _draw_line(layer, g, [(-0.01, -1.1), (0.08, -0.42)])
  if "cvc" in scene.devices:
    _draw_line(layer, g, [(-0.12, -1.0), (-0.08, -0.6), (-0.06, -0.2)])
  if "ng" in scene.devices:
    _draw_line(layer, g, [(0.08, -1.1), (0.2, -0.3), (0.16, peak + 0.08), (-0.12, peak + 0.22)])
  if "pacemaker" in scene.devices:
    bz, by = -0.6 * d, -0.6
    _paint(
      layer,
      g,
      (bz - 0.06, bz + 0.06, by - 0.1, by + 0.1),
      lambda z, y: _soft(
        np.maximum(np.abs(z - _F32(bz)) - _F32(0.035), np.abs(y - _F32(by)) - _F32(0.07)), g.pw
      ),
      combine="max",
    )
    _draw_line(layer, g, [(bz, by), (-0.25, -0.45), (-0.1, -0.2), (-0.25, peak)], 0.8 * LINE)
  if "sternal_wires" in scene.devices:
    for wy in (-0.5, -0.35, -0.2, -0.05):
      sz = -0.58 * d + 0.03 * d * (wy + 0.62) / 0.74
      _draw_line(layer, g, [(sz - 0.03, wy), (sz + 0.03, wy)], 0.01)
  return layer
