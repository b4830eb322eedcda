"""Sun, sky, fog, exposure and sensor noise of one rendered frame."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Lighting:
    """Illumination and weather; hashable, so renderers can cache what depends on it.

    The sun sits at azimuth `sun_azimuth_deg` (counter-clockwise from world +x, east) and
    `sun_altitude_deg` above the horizon (negative: below it, no direct light). A face with
    unit normal n gets albedo * (ambient + (1 - ambient) * max(0, n . sun)); emissive boxes
    get their colour unshaded. Fog mixes towards `fog_rgb` with factor
    1 - exp(-fog_density * depth). `brightness` is the exposure gain applied to
    everything but emissive boxes, which stay at their colour as lamps saturate a camera;
    `noise_std` [grey levels] is the std of additive Gaussian sensor noise drawn from
    `noise_seed`.
    """

    sun_azimuth_deg: float = 135.0
    sun_altitude_deg: float = 55.0
    ambient: float = 0.45  # 0..1
    brightness: float = 1.0
    fog_density: float = 0.0015  # [1/m]
    fog_rgb: RGB = (196, 206, 218)
    sky_top_rgb: RGB = (62, 118, 196)
    sky_horizon_rgb: RGB = (178, 202, 228)
    noise_std: float = 1.5  # [grey levels]
    noise_seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.ambient <= 1.0:
            raise ValueError(f"ambient must be in [0, 1], got {self.ambient}")
        if self.brightness < 0.0 or self.fog_density < 0.0 or self.noise_std < 0.0:
            raise ValueError("brightness, fog_density and noise_std must be >= 0")
        for name in ("fog_rgb", "sky_top_rgb", "sky_horizon_rgb"):  # tuples keep it hashable
            object.__setattr__(self, name, tuple(int(c) for c in getattr(self, name)))

    @classmethod
    def default(cls) -> "Lighting":
        """Clear late morning with light haze."""
        return cls()

    @property
    def sun_direction(self) -> np.ndarray:
        """(3,) unit vector from the ground towards the sun, world frame."""
        az, alt = math.radians(self.sun_azimuth_deg), math.radians(self.sun_altitude_deg)
        return np.array([math.cos(alt) * math.cos(az), math.cos(alt) * math.sin(az), math.sin(alt)])

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Lighting":
        """A random weather: clear noon, overcast, dusk, fog or night, with jittered values."""
        kind = rng.choice(["clear", "clear", "overcast", "dusk", "fog", "night"])
        return _PRESETS[str(kind)](rng)

    @classmethod
    def preset(cls, name: str, rng: np.random.Generator) -> "Lighting":
        """One weather of PRESET_NAMES with values jittered by rng."""
        if name not in _PRESETS:
            raise ValueError(f"unknown lighting preset {name!r}; expected one of {PRESET_NAMES}")
        return _PRESETS[name](rng)


def _rgb(rng: np.random.Generator, base: RGB, jitter: float) -> RGB:
    values = np.asarray(base, float) * rng.uniform(1.0 - jitter, 1.0 + jitter) + rng.normal(0.0, 6.0, 3)
    return tuple(int(v) for v in np.clip(values, 0, 255))  # type: ignore[return-value]


def _common(rng: np.random.Generator) -> dict:
    return {
        "sun_azimuth_deg": float(rng.uniform(0.0, 360.0)),
        "noise_std": float(rng.uniform(0.0, 4.0)),
        "noise_seed": int(rng.integers(0, 2**31 - 1)),
    }


def _clear(rng: np.random.Generator) -> Lighting:
    return Lighting(
        sun_altitude_deg=float(rng.uniform(35.0, 80.0)),
        ambient=float(rng.uniform(0.35, 0.5)),
        brightness=float(rng.uniform(0.9, 1.12)),
        fog_density=float(rng.uniform(0.0003, 0.002)),
        fog_rgb=_rgb(rng, (196, 206, 218), 0.05),
        sky_top_rgb=_rgb(rng, (62, 118, 196), 0.1),
        sky_horizon_rgb=_rgb(rng, (178, 202, 228), 0.05),
        **_common(rng),
    )


def _overcast(rng: np.random.Generator) -> Lighting:
    grey = _rgb(rng, (170, 174, 180), 0.08)
    return Lighting(
        sun_altitude_deg=float(rng.uniform(30.0, 70.0)),
        ambient=float(rng.uniform(0.7, 0.88)),
        brightness=float(rng.uniform(0.72, 0.92)),
        fog_density=float(rng.uniform(0.002, 0.006)),
        fog_rgb=grey,
        sky_top_rgb=_rgb(rng, (128, 134, 142), 0.08),
        sky_horizon_rgb=grey,
        **_common(rng),
    )


def _dusk(rng: np.random.Generator) -> Lighting:
    return Lighting(
        sun_altitude_deg=float(rng.uniform(1.0, 12.0)),
        ambient=float(rng.uniform(0.3, 0.45)),
        brightness=float(rng.uniform(0.55, 0.78)),
        fog_density=float(rng.uniform(0.001, 0.004)),
        fog_rgb=_rgb(rng, (214, 160, 120), 0.08),
        sky_top_rgb=_rgb(rng, (52, 62, 118), 0.1),
        sky_horizon_rgb=_rgb(rng, (236, 150, 92), 0.08),
        **_common(rng),
    )


def _fog(rng: np.random.Generator) -> Lighting:
    grey = _rgb(rng, (184, 188, 192), 0.08)
    return Lighting(
        sun_altitude_deg=float(rng.uniform(20.0, 60.0)),
        ambient=float(rng.uniform(0.65, 0.85)),
        brightness=float(rng.uniform(0.8, 1.0)),
        fog_density=float(rng.uniform(0.015, 0.06)),
        fog_rgb=grey,
        sky_top_rgb=grey,
        sky_horizon_rgb=grey,
        **_common(rng),
    )


def _night(rng: np.random.Generator) -> Lighting:
    return Lighting(
        sun_altitude_deg=float(rng.uniform(-30.0, -5.0)),
        ambient=float(rng.uniform(0.8, 1.0)),
        brightness=float(rng.uniform(0.22, 0.38)),
        fog_density=float(rng.uniform(0.001, 0.004)),
        fog_rgb=_rgb(rng, (40, 44, 60), 0.1),
        sky_top_rgb=_rgb(rng, (8, 12, 28), 0.2),
        sky_horizon_rgb=_rgb(rng, (34, 40, 62), 0.15),
        **_common(rng),
    )


_PRESETS = {"clear": _clear, "overcast": _overcast, "dusk": _dusk, "fog": _fog, "night": _night}
PRESET_NAMES = tuple(_PRESETS)
