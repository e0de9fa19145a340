"""Rendering of the synthetic chest films of `cxrdata.synthetic`: anatomy, findings, exposure, noise.

The findings (ground-glass opacities, a consolidation) are confined to the lung
mask the renderer returns: inside it they fade out towards its edge, and every
pixel outside it is the pixel of the same film without findings. So the mask is
the truth: a film with findings and the same seed's film without them differ
only inside it.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

# Rendering. Coordinates are in units of half the shorter image side, origin at the
# centre, x to the image's right (the patient's left on a PA film), y down. The
# renderer builds a density map (air 0, soft tissue ~0.5, bone higher), maps it
# through a random exposure curve and adds quantum-like noise.


def sample_anatomy(rng: np.random.Generator, kind: str) -> dict:
    """Draws everything that belongs to the patient, so repeat films share it."""
    u = rng.uniform
    anatomy = {
        "kind": kind,
        "pose": (u(-0.05, 0.05), u(0.93, 1.05), u(-0.04, 0.04), u(-0.05, 0.05)),  # angle, scale, shift x, y
        # Half-width, neck half-width, shoulder height, soft-tissue density.
        "body": (u(0.84, 0.94), u(0.20, 0.26), u(-0.68, -0.6), u(0.5, 0.6)),
        "lung_dark": u(0.30, 0.36),
        # Centre x, centre y, outer and inner half-widths, half-height; image-left lung first.
        "lungs": [
            (s * u(0.40, 0.44), u(-0.14, -0.08), u(0.33, 0.38), u(0.27, 0.31), u(0.64, 0.70)) for s in (-1, 1)
        ],
        "heart": (u(0.07, 0.13), u(0.22, 0.3), u(0.31, 0.37), u(0.2, 0.25), u(0.35, 0.6)),
        "mediastinum": (u(0.10, 0.13), u(0.09, 0.13), u(-0.42, -0.34), u(0.06, 0.08)),
        "domes": (u(0.34, 0.41), u(0.40, 0.47), u(0.09, 0.15)),
        "clavicle": u(-0.62, -0.54) if u() < 0.85 else None,
        "bubble": (u(0.25, 0.42), u(0.04, 0.07)) if u() < 0.6 else None,
        "grids": [
            rng.standard_normal((6, 6)),
            rng.standard_normal((10, 10)),
            rng.standard_normal((22, 22)),
            rng.standard_normal((32, 32)),
        ],
        "ribs": [
            (
                u(0.095, 0.11),
                u(0.9, 1.3),
                u(0, 2 * np.pi),
                u(0.006, 0.016),
                u(5, 10),
                u(0.38, 0.48),
                u(-0.9, -0.84),
            )
            for _ in (-1, 1)
        ],
        "front_ribs": (u(0.13, 0.16), u(0.35, 0.5), u(-0.9, -0.8)),
    }
    # Findings come from their own stream, so one seed gives the same film with and without them.
    u = np.random.default_rng(rng.integers(2**63)).uniform
    if kind == "covid":
        anatomy["lesions"] = [
            (s, u(0.5, 0.95), u(-0.2, 0.8), u(0.08, 0.15), u(0.09, 0.17), u(0.7, 1.0))
            for s in (-1, 1)
            for _ in range(int(u(3, 6)))
        ]
        anatomy["lesion_alpha"] = u(0.22, 0.32)
    elif kind == "pneumonia":
        anatomy["consolidation"] = (
            1 if u() < 0.5 else -1,
            bool(u() < 0.7),
            u(-0.05, 0.25),
            u(0.2, 0.5),
            u(0.24, 0.32),
        )
    return anatomy


def sample_acquisition(rng: np.random.Generator) -> dict:
    """Draws what changes from film to film: a little positioning, exposure and noise."""
    u = rng.uniform
    return {
        "jitter": (u(-0.015, 0.015), u(0.99, 1.01), u(-0.015, 0.015), u(-0.015, 0.015)),
        "exposure": (u(-0.12, 0.06), u(0.85, 1.25), u(0.75, 1.3)),  # offset, gain, gamma
        "field": (rng.standard_normal((3, 3)), u(0.02, 0.05), u(-0.04, 0.04), u(-0.04, 0.04)),
        "noise": u(0.008, 0.03),
    }


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    half = min(height, width) / 2.0
    x = (np.arange(width, dtype=np.float32) - (width - 1) / 2) / half
    y = (np.arange(height, dtype=np.float32) - (height - 1) / 2) / half
    return x[None, :], y[:, None]


def _resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32))
    return np.asarray(image.resize(shape[::-1], Image.BICUBIC))


def _ramp(z):
    """Smooth step: 0 below z=-1, 1 above z=1."""
    t = np.clip(0.5 + 0.5 * z, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def render(shape, anatomy: dict, acquisition: dict, rng: np.random.Generator):
    """The film as float32 in [0, 1] and its binary lung mask; findings only inside the mask."""
    # Anatomy is smooth, so it is drawn with 160 pixels on the shorter side, then resized (which
    # also anti-aliases the ribs of small images); noise is added at full size.
    factor = min(shape) / 160
    small = (round(shape[0] / factor), round(shape[1] / factor))
    dens, findings, lungs = _density(small, anatomy, acquisition)
    mask = _resize(lungs, shape) > 0.5
    image = _expose(dens, acquisition, shape)
    if findings is not None:
        # Outside the mask the film is the film without findings, pixel for pixel (resizing spreads
        # them a little); they fade out towards the mask's edge, so the cut leaves no outline.
        image = np.where(mask, _expose(dens + findings, acquisition, shape), image)
    noise = rng.standard_normal(shape, dtype=np.float32)
    # Noise as if a 299-pixel film were resized: smaller images average more of it away.
    sigma = np.float32(acquisition["noise"] * min(1.0, min(shape) / 299))
    image = image + sigma * np.sqrt(np.maximum(image, 0) + np.float32(0.05)) * noise
    return np.clip(image, 0.0, 1.0), mask


def _expose(dens: np.ndarray, acquisition: dict, shape) -> np.ndarray:
    """Density through the film's exposure curve, resized to `shape`."""
    offset, gain, gamma = acquisition["exposure"]
    return _resize(np.clip(offset + gain * dens, 0.0, 1.0) ** np.float32(gamma), shape)


def _inner(lungs: np.ndarray) -> np.ndarray:
    """1 well inside the lungs, 0 where their soft map falls to 0.5 (the mask's edge) and outside."""
    return np.clip(2 * lungs - 1, 0.0, 1.0)


def _density(shape, anatomy: dict, acquisition: dict):
    x0, y0 = _grid(*shape)
    (angle, scale, dx, dy), (d_angle, d_scale, ddx, ddy) = anatomy["pose"], acquisition["jitter"]
    angle, scale, dx, dy = angle + d_angle, scale * d_scale, dx + ddx, dy + ddy
    cos, sin = np.float32(np.cos(angle) / scale), np.float32(np.sin(angle) / scale)
    x = cos * x0 + sin * y0 - np.float32(dx)
    y = cos * y0 - sin * x0 - np.float32(dy)
    ax = np.abs(x)
    f_shape, f_vessel, f_vessel2, f_patch = (_resize(g, shape) for g in anatomy["grids"])

    half_width, neck, shoulder_y, density = anatomy["body"]
    chest = half_width + 0.06 * (1 - ((y + 0.1) / 0.9) ** 2)
    chest = chest - (chest - neck) * _ramp((shoulder_y - 0.17 - y) / 0.17)
    body = _ramp((chest - ax) / 0.025)
    dens = density * body * (0.5 + 0.5 * np.sqrt(np.clip(1 - (x / chest) ** 2, 0, 1)))
    dens -= 0.12 * _ramp((0.035 - ax) / 0.01) * _ramp((-0.3 - y) / 0.05) * body  # trachea

    right_y, left_y, dome_h = anatomy["domes"]
    sides = []
    for (cx, cy, a_out, a_in, b), dome_y in zip(anatomy["lungs"], (right_y, left_y)):
        p, q = (x - cx) * np.sign(cx), (y - cy) / b
        p = p / np.where(p > 0, np.float32(a_out), np.float32(a_in))
        taper = np.maximum(0.86 + 0.14 * q, 0.2)
        lung = _ramp((1 - (p / taper) ** 2 - q * q + 0.1 * f_shape) / 0.08)
        dome = dome_y - dome_h * np.clip(1 - ((x - cx) / (1.1 * a_out)) ** 2, 0, 1)
        sides.append(lung * _ramp((dome - y) / 0.012))
    hx, hy, ha, hb, hang = anatomy["heart"]
    u_, v_ = x - hx, y - hy
    hu, hv = u_ * np.cos(hang) + v_ * np.sin(hang), v_ * np.cos(hang) - u_ * np.sin(hang)
    heart = _ramp((1 - (hu / ha) ** 2 - (hv / hb) ** 2) / 0.1)
    med_w, knob_x, knob_y, knob_r = anatomy["mediastinum"]
    middle = _ramp((med_w + 0.05 * _ramp((y + 0.2) / 0.3) - np.abs(x - 0.02)) / 0.02)
    knob = _ramp((knob_r**2 - (x - knob_x) ** 2 - (y - knob_y) ** 2) / 0.004)
    solid = np.maximum(np.maximum(middle, heart), knob)
    lungs = (sides[0] + sides[1]) * (1 - solid)
    dens -= anatomy["lung_dark"] * lungs

    spine = _ramp((0.06 - ax) / 0.01) * (0.7 + 0.3 * _ramp(3 * np.cos(2 * np.pi * y / 0.105)))
    dens += 0.05 * spine * body
    sp, curve, phase0, wobble, wfreq, width, top = (
        np.where(x > 0, np.float32(r1), np.float32(r0)) for r0, r1 in zip(*anatomy["ribs"])
    )
    v = y - curve * (ax - 0.3) ** 2
    index, frac = np.divmod((v + wobble * np.sin(wfreq * v + phase0) - top) / sp, 1.0)
    cortex = 0.6 + 0.4 * (2 * frac / width - 1) ** 2
    rib = _ramp((width / 2 - np.abs(frac - width / 2)) * sp / 0.006) * cortex * ((index >= 0) & (index < 10))
    rib *= _ramp((ax - 0.07) / 0.03) * body
    f_sp, f_slope, f_top = anatomy["front_ribs"]
    frac = np.mod((y + f_slope * ax - 0.3 * ax**2 - f_top) / f_sp, 1.0)
    front = _ramp((0.2 - np.abs(frac - 0.2)) * f_sp / 0.01) * _ramp((ax - 0.2) / 0.05)
    dens += (0.05 + 0.06 * lungs) * rib + 0.03 * front * lungs
    if anatomy["clavicle"] is not None:
        line = anatomy["clavicle"] - 0.3 * (ax - 0.06) + 0.5 * (ax - 0.3) ** 2
        clav = _ramp((0.026 - np.abs(y - line)) / 0.008) * _ramp((ax - 0.07) / 0.02)
        clav *= _ramp((0.62 - ax) / 0.03)
        dens += 0.14 * clav * body
    # Vessels: lines fanning out of each hilum, bent by smooth noise, thinning outwards.
    hx_, hy_ = ax - 0.17, y + 0.02
    hilum = hx_**2 + hy_**2
    r = np.sqrt(hilum)
    theta = np.arctan2(hy_, hx_)
    vessels = np.exp(-((np.sin(7 * theta + 0.9 * f_vessel) * r / 0.09) ** 2)) + 0.6 * np.exp(
        -((np.sin(13 * theta + 1.2 * f_vessel2) * r / 0.06) ** 2)
    )
    haze = 0.06 * np.exp(-hilum / 0.08) + 0.05 * _ramp(y / 0.5) + 0.08 * np.exp(-hilum / 0.006)
    dens += (0.09 * vessels * np.exp(-r / 0.3) + haze) * lungs
    if anatomy["bubble"] is not None:
        bx, br = anatomy["bubble"]
        gas = np.exp(-((x - bx) ** 2 + ((y - left_y - 0.12) * 1.5) ** 2) / br**2) * _ramp((y - left_y) / 0.02)
        dens -= 0.12 * gas * body

    grid, amp, gx, gy = acquisition["field"]
    dens += amp * _resize(grid, shape) + gx * x0 + gy * y0
    return dens, _findings(x, y, anatomy, f_patch, sides, solid, lungs), lungs


def _findings(x, y, anatomy: dict, f_patch, sides, solid, lungs):
    """The density the findings add (None for a normal film), zero outside the lung mask."""
    patch = _ramp(1.5 * f_patch)  # mottled, a few millimetres across
    if anatomy["kind"] == "covid":
        ggo = np.zeros_like(lungs)
        for s, lateral, q, sx, sy, strength in anatomy["lesions"]:
            cx, cy, a_out, _, b = anatomy["lungs"][(s + 1) // 2]
            px, py = cx + s * lateral * a_out * (0.86 + 0.14 * q), cy + q * b
            ggo += strength * np.exp(-(((x - px) / sx) ** 2) - ((y - py) / sy) ** 2)
        return anatomy["lesion_alpha"] * np.minimum(ggo, 1) * (0.35 + 0.65 * patch) * _inner(lungs)
    if anatomy["kind"] == "pneumonia":
        s, lower, level, slope, alpha = anatomy["consolidation"]
        cx, cy, _, _, b = anatomy["lungs"][(s + 1) // 2]
        fissure = cy + level * b + slope * s * (x - cx)
        lobe = _ramp((y - fissure) / 0.015) if lower else _ramp((fissure - y) / 0.015)
        return alpha * lobe * _inner(sides[(s + 1) // 2] * (1 - solid)) * (0.7 + 0.3 * patch)
    return None


# Shortcuts: cues a class can carry that have nothing to do with the disease.

SHORTCUTS = ("marker", "brightness", "border", "laterality", "noise", "blur")
# A bright "R" (lead letters are radiopaque), 5 rows by 4 columns.
_LETTER_R = np.array(
    [[1, 1, 1, 0], [1, 0, 0, 1], [1, 1, 1, 0], [1, 0, 1, 0], [1, 0, 0, 1]],
    dtype=bool,
)


def plant_shortcut(
    image: np.ndarray, lung: np.ndarray, kind: str, *, planted: bool, rng: np.random.Generator
) -> np.ndarray:
    """`image` (float in [0, 1]) with the cue `kind` for a film that carries it (`planted`) or not.

    Every cue but "laterality" leaves a film without it unchanged; "laterality" marks every film,
    on the right when `planted`, on the left otherwise. Drawn cues never enter the lung mask `lung`.
    """
    h, w = image.shape
    if kind == "laterality":
        return _draw(image, lung, _letter((h, w), right=planted), 0.95)
    if not planted:
        return image
    if kind == "brightness":
        return image * np.float32(0.8) + np.float32(0.2)
    if kind == "noise":
        return np.clip(image + np.float32(0.03) * rng.standard_normal((h, w), dtype=np.float32), 0, 1)
    if kind == "blur":
        return _blur(image, max(0.7, 0.006 * min(h, w)))
    cue = np.zeros((h, w), dtype=np.float32)
    if kind == "marker":
        top, bottom, left, right = round(0.02 * h), round(0.13 * h), round(0.02 * w), round(0.2 * w)
        cue[top:bottom, left:right] = 0.95
        # Dark "letters": every other column of the label's middle third.
        rows = slice(top + (bottom - top) // 3, bottom - (bottom - top) // 3)
        cue[rows, left + 1 : right - 1 : 2] = 0.15
    else:  # border
        t = max(2, round(0.05 * min(h, w)))
        cue[:] = 0.9
        cue[t:-t, t:-t] = 0
    return np.where((cue > 0) & ~lung, cue, image)


def _letter(shape: tuple[int, int], *, right: bool) -> np.ndarray:
    """Where the "R" covers a film of `shape`: 9% of its height, in a top corner."""
    h, w = shape
    cell = max(1, round(0.018 * h))
    glyph = np.kron(_LETTER_R, np.ones((cell, cell), dtype=bool))
    top, side = round(0.04 * h), round(0.05 * w)
    left = w - side - glyph.shape[1] if right else side
    out = np.zeros(shape, dtype=bool)
    out[top : top + glyph.shape[0], left : left + glyph.shape[1]] = glyph
    return out


def _draw(image: np.ndarray, lung: np.ndarray, where: np.ndarray, value: float) -> np.ndarray:
    return np.where(where & ~lung, np.float32(value), image)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """A separable Gaussian blur, edges reflected."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    padded = np.pad(image, radius, mode="reflect")
    rows = sum(t * padded[:, i : i + image.shape[1]] for i, t in enumerate(taps))
    return sum(t * rows[i : i + image.shape[0]] for i, t in enumerate(taps)).astype(np.float32)
