"""Untrusted bytes -> model input, with bounded pixels. Runs in a worker thread, never on the loop."""
from __future__ import annotations

import io
import warnings
from typing import Sequence

import torch
from PIL import Image

from models_store.preprocess import Preprocess

from .errors import PayloadTooLarge, UnsupportedImage

# Formats we decode; others (PDF, EPS via Ghostscript, ...) are refused before any parsing.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "PPM")


def bombs_are_errors() -> None:
    """Pillow only *warns* between MAX_IMAGE_PIXELS and twice that: make that an error too."""
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def decode_image(data: bytes, preprocess: Preprocess, max_pixels: int, name: str = "image") -> torch.Tensor:
    """Bytes of one image -> its 8-bit pixels [C, S, S] as the tower sees them before normalisation;
    415 if not an image, 413 if too many pixels."""
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
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise PayloadTooLarge(f"{name}: image has {width}x{height} = {width * height} pixels, "
                                  f"more than the limit of {max_pixels}")
        try:
            image.load()
            return preprocess.pixels(image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise PayloadTooLarge(f"{name}: image too large: {e}") from None
        except MemoryError:
            raise PayloadTooLarge(f"{name}: image too large to decode") from None
        except Exception as e:  # truncated or corrupt data
            raise UnsupportedImage(f"{name}: image data is truncated or corrupt: {e}") from None


def decode_images(files: Sequence[tuple[str, bytes]], preprocess: Preprocess, max_pixels: int) -> torch.Tensor:
    """[(name, bytes), ...] -> [N, C, S, S] uint8; the first bad file fails the request, named."""
    tensors = [decode_image(data, preprocess, max_pixels, name=f"file {i + 1} ({name!r})")
               for i, (name, data) in enumerate(files)]
    return torch.stack(tensors)
