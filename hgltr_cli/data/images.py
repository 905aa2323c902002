"""Decoding any image a user's folder may hold into an 8-bit RGB PIL image, or a clear error.

Real folders hold grayscale scans, palette GIFs, CMYK JPEGs from print shops, 16-bit PNGs,
logos with alpha, phone photos with EXIF rotation, 100-megapixel panoramas — and corrupt,
truncated or empty files. Everything decodable is converted (never crashes); everything
else raises `BadImageError` naming the file and the `skip_bad_images` switch. With that
switch on, loaders skip such files and record them in a `BadImageReport`.
"""
from __future__ import annotations

import io
import os
import struct
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hgltr_cli.errors import HgltrError

SKIP_HINT = ("Fix or remove the file, or pass `--set dataset.skip_bad_images=true` to skip bad images "
             "(they are counted and listed at the end of the run).")

#: Decompression-bomb guard: images with more pixels than this are refused before their
#: pixels are decoded. Default = PIL's own hard limit (2 x Image.MAX_IMAGE_PIXELS, ~179 MP);
#: images between PIL's warning and error thresholds are decoded without the warning.
#: Override with the environment variable HGLTR_MAX_IMAGE_PIXELS (0 = no limit).
DEFAULT_MAX_PIXELS = 2 * 89_478_485

ImageInput = Union[str, os.PathLike, bytes, BinaryIO]


class BadImageError(HgltrError):
    """An image file that cannot be decoded (corrupt, truncated, empty, missing, too large)."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"Cannot read image {source}: {reason}", SKIP_HINT)
        self.source = source
        self.reason = reason


def max_image_pixels() -> int | None:
    raw = os.environ.get("HGLTR_MAX_IMAGE_PIXELS")
    if raw is None or not raw.strip():
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise HgltrError(f"HGLTR_MAX_IMAGE_PIXELS={raw!r} is not a number.",
                         "Set it to a pixel count such as 300000000, or 0 for no limit.") from None
    return value if value > 0 else None


_PIL_LIMIT_LOCK = threading.Lock()


@contextmanager
def _own_bomb_guard() -> Iterator[None]:
    """Switch PIL's global bomb check off around Image.open; we check the header size ourselves."""
    with _PIL_LIMIT_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """High-bit-depth pixels -> 0..255 (PIL's own convert would clip 16-bit values to white)."""
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
        if lo >= 0.0 and hi <= 1.0:  # float images in [0, 1]
            return np.round(arr * 255.0).astype(np.uint8)
        span = hi - lo if hi > lo else 1.0
        return np.round((arr - lo) / span * 255.0).astype(np.uint8)
    arr = arr.astype(np.int64)
    hi = int(arr.max(initial=0))
    if arr.min(initial=0) >= 0 and hi <= 255:
        return arr.astype(np.uint8)
    top = 65535 if hi <= 65535 else int(np.iinfo(np.int32).max)
    return np.clip(np.round(np.clip(arr, 0, None) * (255.0 / top)), 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: alpha composited on `background`, 16-bit/float scaled, CMYK converted."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
        if mode == "RGB":
            return im
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = _scale_to_uint8(np.asarray(im))
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if mode == "CMYK" and im.info.get("icc_profile"):
        try:  # a proper colour-managed conversion when the file carries its profile
            from PIL import ImageCms
            src = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
            dst = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken profile falls back to the naive conversion
            pass
    return im.convert("RGB")


def _describe(src: ImageInput, name: str | None) -> str:
    if name:
        return name
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return getattr(src, "name", "<in-memory image>")


def load_image_rgb(src: ImageInput, *, name: str | None = None, draft_size: int | None = None,
                   max_pixels: int | None | str = "env") -> Image.Image:
    """Decode a file path, bytes or file object into an RGB PIL image; raise BadImageError if impossible.

    `draft_size` lets JPEG decoding skip resolution (DCT scaling) while keeping both sides
    >= draft_size: a 6000x4000 photo needed at 224 px decodes ~8x faster and smaller.
    `max_pixels` (default: HGLTR_MAX_IMAGE_PIXELS or ~179 MP) is the decompression-bomb guard.
    """
    label = _describe(src, name)
    limit = max_image_pixels() if max_pixels == "env" else max_pixels
    try:
        if isinstance(src, (str, os.PathLike)):
            p = Path(src)
            if not p.exists():
                raise BadImageError(label, "file not found")
            if p.is_dir():
                raise BadImageError(label, "is a directory, not an image file")
            if p.stat().st_size == 0:
                raise BadImageError(label, "the file is empty (0 bytes)")
            fh: BinaryIO = open(p, "rb")
        elif isinstance(src, (bytes, bytearray, memoryview)):
            if len(src) == 0:
                raise BadImageError(label, "the data is empty (0 bytes)")
            fh = io.BytesIO(bytes(src))
        else:
            fh = src
        with fh:
            with _own_bomb_guard():
                im = Image.open(fh)
            w, h = im.size
            if w <= 0 or h <= 0:
                raise BadImageError(label, f"invalid size {w}x{h}")
            if limit is not None and w * h > limit:
                raise BadImageError(label, f"{w}x{h} = {w * h:,} pixels exceeds the decompression-bomb guard of "
                                           f"{limit:,} pixels (raise it with HGLTR_MAX_IMAGE_PIXELS if the file "
                                           "is trusted)")
            if draft_size and im.format == "JPEG":
                im.draft("RGB", (draft_size, draft_size))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # palette-transparency and EXIF warnings are handled below
                im.load()
                try:
                    im = ImageOps.exif_transpose(im)
                except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
                    pass
                return to_rgb(im)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(label, "not a recognised image format (corrupt or not an image)") from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(label, f"decompression-bomb guard: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, IndexError, KeyError, TypeError,
            ZeroDivisionError, struct.error) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower():
            msg = f"the file is truncated ({msg})"
        raise BadImageError(label, msg) from None


@dataclass
class BadImageReport:
    """Bad images met while loading with skip_bad_images on: unique files plus how often each was hit."""

    files: dict[str, str] = field(default_factory=dict)  # source -> reason
    hits: int = 0

    def add(self, source: str, reason: str) -> None:
        self.hits += 1
        self.files.setdefault(source, reason)

    def extend(self, items) -> None:
        for source, reason in items:
            self.add(source, reason)

    @property
    def count(self) -> int:
        return len(self.files)

    def __bool__(self) -> bool:
        return bool(self.files)

    def lines(self) -> list[str]:
        return [f"{src}: {reason}" for src, reason in sorted(self.files.items())]

    def summary(self) -> str:
        if not self.files:
            return "no bad images"
        return (f"skipped {self.count} bad image file(s) ({self.hits} time(s) in total):\n  "
                + "\n  ".join(self.lines()))

    def to_dict(self) -> dict:
        return {"count": self.count, "hits": self.hits,
                "files": [{"path": s, "reason": r} for s, r in sorted(self.files.items())]}
