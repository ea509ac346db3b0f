"""Untrusted bytes -> what the engine takes, with bounded pixels. Runs in a worker thread, never on
the loop; imports no torch (a front-end process holds none).

Each image becomes its 8-bit pixels [C, S, S] (decoded on the host, `decode_image`), or, where the
engine decodes JPEGs on its device (`device_jpeg`), the file itself after its header was checked
here: a whole JPEG of mode L or RGB, upright, not a thin strip; anything else is decoded on the host.
The same bounds hold on both paths: the header's pixel count, the formats, the bomb check.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from models_store.preprocess import EXIF_ORIENTATION, Preprocess

from service.errors import PayloadTooLarge, UnsupportedImage

# Formats we decode; others (PDF, EPS via Ghostscript, ...) are refused before any parsing.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "PPM")


@dataclass(frozen=True)
class Decoded:
    """One image for the engine: its pixels [C, S, S] uint8, or a JPEG file for the device to decode."""
    pixels: Optional[np.ndarray] = None
    jpeg: Optional[bytes | memoryview] = None
    name: str = "image"  # as errors name it

    @property
    def nbytes(self) -> int:
        return self.pixels.nbytes if self.pixels is not None else len(self.jpeg or b"")


def bombs_are_errors() -> None:
    """Pillow only *warns* between MAX_IMAGE_PIXELS and twice that: make that an error too."""
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def open_image(data: bytes, max_pixels: int, name: str) -> Image.Image:
    """The header of one image, checked: 415 if not an image, 413 if too many pixels."""
    if not data:
        raise UnsupportedImage(f"{name}: empty file")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PayloadTooLarge(f"{name}: image too large: {e}") from None
    except Image.UnidentifiedImageError:  # its message names our BytesIO object: say what it means instead
        raise UnsupportedImage(f"{name}: not a decodable image: the bytes are none of {', '.join(FORMATS)}") from None
    except Exception as e:  # Pillow raises many types on hostile bytes; all mean "not an image"
        raise UnsupportedImage(f"{name}: not a decodable image ({', '.join(FORMATS)}): {e}") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise PayloadTooLarge(f"{name}: image has {width}x{height} = {width * height} pixels, "
                              f"more than the limit of {max_pixels}")
    return image


def host_pixels(image: Image.Image, preprocess: Preprocess, name: str) -> np.ndarray:
    try:
        image.load()
        return preprocess.pixels(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PayloadTooLarge(f"{name}: image too large: {e}") from None
    except MemoryError:
        raise PayloadTooLarge(f"{name}: image too large to decode") from None
    except Exception as e:  # truncated or corrupt data
        raise UnsupportedImage(f"{name}: image data is truncated or corrupt: {e}") from None


def decode_image(data: bytes, preprocess: Preprocess, max_pixels: int, name: str = "image") -> np.ndarray:
    """Bytes of one image -> its 8-bit pixels [C, S, S] as the tower sees them before normalisation."""
    with open_image(data, max_pixels, name) as image:
        return host_pixels(image, preprocess, name)


def device_decodable(image: Image.Image, data: bytes, preprocess: Preprocess) -> bool:
    """A JPEG the engine's device decodes as the host would: L or RGB, upright, not a thin strip,
    and whole (a decoder on a device may fill a truncated file in where Pillow refuses it)."""
    if image.format != "JPEG" or image.mode not in ("L", "RGB") or not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        return False
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block: the host path says what is wrong
        return False
    return orientation in (None, 1) and preprocess.fits_resize(*image.size)


def decode_upload(data: bytes, preprocess: Preprocess, max_pixels: int, name: str = "image",
                  device_jpeg: bool = False) -> Decoded:
    with open_image(data, max_pixels, name) as image:
        if device_jpeg and device_decodable(image, data, preprocess):
            return Decoded(jpeg=data, name=name)
        return Decoded(pixels=host_pixels(image, preprocess, name), name=name)


def decode_uploads(files: Sequence[tuple[str, bytes]], preprocess: Preprocess, max_pixels: int,
                   device_jpeg: bool = False) -> list[Decoded]:
    """[(name, bytes), ...] -> one Decoded each; the first bad file fails the request, named."""
    return [decode_upload(data, preprocess, max_pixels, file_label(i, name), device_jpeg)
            for i, (name, data) in enumerate(files)]


def file_label(index: int, name: str) -> str:
    return f"file {index + 1} ({name!r})"
