"""The invisible watermark: 64 bits spread over the image's chroma, through invisible-watermark (`imwatermark`).

Method and payload come from measurements (docs/design.md, "Provenance"): `dwtDctSvd` on the U channel at
the library's scale 36 kept 64 of 64 bits after JPEG quality 75 with 4:2:0 chroma and after a resize to half
size, where BFL's `dwtDct` fell to chance after JPEG. The payload is the ASCII `flux2spl`, so anyone with the
library reads it back with `WatermarkDecoder("bytes", 64).decode(bgr, "dwtDctSvd")`; it has as many ones as
zeros, so a flat image (every block reads the same bit) matches half of it, not more.

Embedding uses the library's per-block code (`EmbedDwtDctSvd.encode_frame`) but does the colour and wavelet
transforms in floating point: the library's own `encode` writes floats back into uint8 (saturated colours
wrap from 255 to 0) and swaps the horizontal and vertical details of the chroma it rebuilds. Both cost
4 dB of PSNR and some JPEG robustness; neither changes what a decoder reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

PAYLOAD = b"flux2spl"
PAYLOAD_BITS: tuple[int, ...] = tuple(int(bit) for byte in PAYLOAD for bit in f"{byte:08b}")
METHOD = "dwtDctSvd"
SCALES = (0, 36, 0)  # Y, U, V: the library's default, the U channel only
FOUND_AT_BITS = 54  # of 64; a random image matches that many with probability 3e-8 (measured rate: docs/)
MIN_PIXELS = 256 * 256  # the library refuses smaller images
MIN_SIDE = 16  # a thinner image has no 4x4 block in its wavelet band to read (the library fails on it)
MAX_DETECTION_PIXELS = 4096 * 4096  # the largest image a check decodes, after scaling it up

# BFL's reference code marks with `dwtDct` and this 48-bit constant, of which `bin()` keeps 46 bits.
BFL_MESSAGE = 0b001010101111111010000111100111001111010100101110
BFL_BITS: tuple[int, ...] = tuple(int(bit) for bit in bin(BFL_MESSAGE)[2:])
BFL_FOUND_AT_BITS = 38  # of 46; BFL's mark reads 43-46 on clean images, unmarked ones 17-29 (measured)


class ImageTooSmallError(ValueError):
    """The image has fewer pixels than the watermark needs."""


def too_small_note(width: int, height: int) -> str:
    return (
        f"{width}x{height} is too small for the invisible watermark, which needs {MIN_PIXELS:,} pixels "
        "(256x256); the image gets the other marks"
    )


def embed_watermark(image: Image.Image) -> Image.Image:
    """`image` (RGB) with the payload embedded; raises `ImageTooSmallError` below `MIN_PIXELS`."""
    import cv2
    import pywt
    from imwatermark.dwtDctSvd import EmbedDwtDctSvd

    if image.width * image.height < MIN_PIXELS or min(image.width, image.height) < MIN_SIDE:
        raise ImageTooSmallError(too_small_note(image.width, image.height))
    embed = EmbedDwtDctSvd(list(PAYLOAD_BITS), wmLen=len(PAYLOAD_BITS), scales=list(SCALES))
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    yuv: np.ndarray = np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV), dtype=np.float32) * 255  # [H, W, 3]
    yuv[..., 1:] += 0.5  # OpenCV offsets float chroma by 0.5 (127.5 here), 8-bit chroma by 128: read as 8-bit
    rows, columns = yuv.shape[0] // 4 * 4, yuv.shape[1] // 4 * 4
    for channel, scale in enumerate(SCALES):
        if scale > 0:
            approximation, details = pywt.dwt2(yuv[:rows, :columns, channel], "haar")
            embed.encode_frame(approximation, scale)
            yuv[:rows, :columns, channel] = pywt.idwt2((approximation, details), "haar")
    yuv[..., 1:] -= 0.5
    marked = cv2.cvtColor(yuv / 255, cv2.COLOR_YUV2RGB) * 255
    return Image.fromarray(np.clip(marked.round(), 0, 255).astype(np.uint8))


@dataclass(frozen=True)
class WatermarkReading:
    """How many bits of a mark an image carries, at the best of the scales tried."""

    name: str  # "flux2-split" or "BFL"
    matched: int
    bits: int
    found: bool
    scale: float = 1.0  # the image was read at this multiple of its size (2.0: it had been halved)

    def describe(self) -> str:
        at = "" if self.scale == 1.0 else f", read at {self.scale:g}x its size"
        verdict = "found" if self.found else "not found"
        return f"{self.name} watermark {verdict} ({self.matched} of {self.bits} bits{at})"


def _bgr(image: Image.Image) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)


def _matched(image: Image.Image, method: str, expected: tuple[int, ...], scales: tuple[int, ...] | None) -> int:
    from imwatermark import WatermarkDecoder

    configs = {"scales": list(scales)} if scales else {}
    bits = WatermarkDecoder("bits", len(expected)).decode(_bgr(image), method, **configs)
    return int(np.sum(np.asarray(bits, dtype=int) == np.asarray(expected)))


def _candidates(image: Image.Image) -> list[tuple[float, Image.Image]]:
    """The image read at its own size, at twice it (a halved copy) and at a half and a quarter (an upscaled one)."""
    candidates = []
    for scale in (1.0, 2.0, 0.5, 0.25):
        width, height = round(image.width * scale), round(image.height * scale)
        if MIN_PIXELS <= width * height <= MAX_DETECTION_PIXELS and min(width, height) >= MIN_SIDE:
            resized = image if scale == 1.0 else image.resize((width, height), Image.Resampling.BICUBIC)
            candidates.append((scale, resized))
    return candidates


def detect_watermark(image: Image.Image) -> WatermarkReading | None:
    """Our mark's best reading over the scales tried; None when the image is too small to read at all."""
    return _best(image, "flux2-split", METHOD, PAYLOAD_BITS, SCALES, FOUND_AT_BITS)


def detect_bfl_watermark(image: Image.Image) -> WatermarkReading | None:
    """BFL's reference mark (`dwtDct`, library defaults), read at the image's own size."""
    return _best(image, "BFL", "dwtDct", BFL_BITS, None, BFL_FOUND_AT_BITS, rescale=False)


def _best(
    image: Image.Image,
    name: str,
    method: str,
    expected: tuple[int, ...],
    scales: tuple[int, ...] | None,
    found_at: int,
    rescale: bool = True,
) -> WatermarkReading | None:
    readings = [
        WatermarkReading(name, matched, len(expected), matched >= found_at, scale)
        for scale, candidate in _candidates(image)
        if rescale or scale == 1.0
        for matched in [_matched(candidate, method, expected, scales)]
    ]
    if not readings:
        return None
    return max(readings, key=lambda reading: reading.matched)
