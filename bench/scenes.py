"""Synthetic photographs for measuring invisible watermarks: natural structure, made offline from a seed.

A watermark's robustness depends on image content: flat colour hides nothing and pure noise is destroyed by
any compression. These scenes have what photographs have instead: a 1/f² power spectrum (the statistics of
natural images), smooth gradients (sky), hard-edged objects with shading, and fine texture, in colour.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _pink_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A [size, size] field with a 1/f² power spectrum, scaled to [0, 1]."""
    frequencies = np.fft.fftfreq(size)
    radius = np.sqrt(frequencies[:, None] ** 2 + frequencies[None, :] ** 2)
    radius[0, 0] = 1.0
    spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / radius
    spectrum[0, 0] = 0
    field = np.real(np.fft.ifft2(spectrum))
    return (field - field.min()) / (np.ptp(field) or 1.0)


def natural_scene(size: int, seed: int) -> Image.Image:
    """An RGB `size`x`size` image: textured ground, a sky gradient, and shaded objects with soft edges."""
    rng = np.random.default_rng(seed)
    tint = rng.uniform(0.3, 1.0, size=3)
    texture = np.stack([_pink_field(rng, size) for _ in range(3)], axis=-1)  # [size, size, 3]
    rows = np.linspace(0.0, 1.0, size)[:, None, None]
    sky = np.concatenate([0.5 + 0.4 * (1 - rows), 0.6 + 0.3 * (1 - rows), 0.9 - 0.2 * rows], axis=-1)
    horizon = int(size * rng.uniform(0.35, 0.6))
    base = np.broadcast_to(sky, (size, size, 3)).copy()
    base[horizon:] = 0.55 * texture[horizon:] * tint + 0.2
    base[:horizon] = 0.85 * base[:horizon] + 0.15 * texture[:horizon]
    image = Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 12))):
        x, y = rng.uniform(0, size, size=2)
        radius = rng.uniform(size * 0.03, size * 0.2)
        colour = tuple(int(c) for c in rng.integers(20, 235, size=3))
        box = (x - radius, y - radius * rng.uniform(0.5, 1.5), x + radius, y + radius)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    shaded = np.asarray(image.filter(ImageFilter.GaussianBlur(size / 512)), dtype=np.float64) / 255
    light = 0.75 + 0.25 * _pink_field(rng, size)[..., None]  # uneven lighting across the frame
    grain = rng.normal(scale=0.012, size=shaded.shape)  # sensor noise
    return Image.fromarray((np.clip(shaded * light + grain, 0, 1) * 255).round().astype(np.uint8))
