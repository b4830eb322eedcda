"""Flat shading, fog and exposure: per-face colour tables and per-camera lighting tables."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._faces import BoxGeometry, Faces
from ._ground_view import GroundView
from .lighting import Lighting

FOG_BITS = 6
FOG_LEVELS = 1 << FOG_BITS  # transmittance steps for box faces


@dataclass(frozen=True, eq=False)
class LightingTables:
    """What a lighting fixes for one camera: ground gain and haze per pixel, the fogged sky."""

    ground_gain: np.ndarray  # (H - row0, W, 4) uint8: sun * exposure * fog transmittance * gain_one
    gain_one: float  # the ground_gain value meaning 1.0 (128 unless exposure is above ~2)
    ground_haze: np.ndarray  # (H - row0, W, 4) uint8: fog colour * exposure * (1 - transmittance)
    sky_rgba: np.ndarray  # (H, W, 4) uint8, lit and fogged

    @classmethod
    def build(cls, view: GroundView, lighting: Lighting) -> "LightingTables":
        keep = np.exp(-lighting.fog_density * view.background_depth)[..., None]  # (H, W, 1)
        fog = np.asarray(lighting.fog_rgb, np.float32) * lighting.brightness
        sun = lighting.brightness * diffuse_light(lighting, np.array([[0.0, 0.0, 1.0]]))[0]
        gain_one = float(max(1, min(128, int(255.0 / max(sun, 1e-6)))))
        row0 = view.ground_row0
        gain = _rgba(np.broadcast_to(sun * gain_one * keep[row0:], keep[row0:].shape[:2] + (3,)), gain_one)
        haze = _rgba(fog * (1.0 - keep[row0:]), 0)
        sky = view.sky_image(lighting.sky_top_rgb, lighting.sky_horizon_rgb) * lighting.brightness
        return cls(gain, gain_one, haze, _rgba(sky * keep + fog * (1.0 - keep), 255))


def _rgba(rgb: np.ndarray, alpha: float) -> np.ndarray:
    out = np.empty(rgb.shape[:-1] + (4,), np.uint8)
    out[..., :3] = np.clip(np.rint(rgb), 0, 255)
    out[..., 3] = alpha
    return out


def diffuse_light(lighting: Lighting, normals: np.ndarray) -> np.ndarray:
    """(F,) ambient + (1 - ambient) * max(0, n . sun), faded out as the sun sets."""
    sun_up = min(1.0, max(0.0, math.sin(math.radians(lighting.sun_altitude_deg)) / math.sin(math.radians(6.0))))
    direct = np.maximum(normals @ lighting.sun_direction, 0.0) * sun_up
    return lighting.ambient + (1.0 - lighting.ambient) * direct


def face_colours(geometry: BoxGeometry, faces: Faces, lighting: Lighting) -> np.ndarray:
    """(F + 1, levels) uint32 packed colour and tag (little-endian bytes R, G, B, tag) of
    each face, row 0 for the background: lit (emissive boxes unshaded), then mixed towards
    the fog colour in `levels` steps of transmittance (a single level without fog)."""
    albedo = geometry.rgb[faces.box].astype(np.float32)
    lit = albedo * (lighting.brightness * diffuse_light(lighting, faces.normals))[:, None].astype(np.float32)
    emissive = geometry.emissive[faces.box]
    lit[emissive] = albedo[emissive]
    lit = np.clip(np.concatenate([np.zeros((1, 3), np.float32), lit]), 0.0, 255.0)
    if lighting.fog_density > 0.0:
        fog = np.clip(np.asarray(lighting.fog_rgb, np.float32) * lighting.brightness, 0.0, 255.0)
        keep = np.linspace(1.0, 0.0, FOG_LEVELS, dtype=np.float32)  # transmittance per level
        mixed = np.multiply.outer(lit, keep)  # (F + 1, 3, levels)
        mixed += np.multiply.outer(fog, 1.0 - keep)
    else:
        mixed = lit[:, :, None]
    channels = (mixed + 0.5).astype(np.uint32)
    packed = channels[:, 1] << 8
    packed |= channels[:, 0]
    packed |= channels[:, 2] << 16
    tags = np.concatenate([[0], geometry.tag[faces.box]]).astype(np.uint32)
    packed |= (tags << 24)[:, None]
    return packed
