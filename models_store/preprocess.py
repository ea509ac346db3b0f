"""Image preprocessing shared by trainer and service: one definition of what a model sees."""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Optional

import numpy as np
from PIL import Image, ImageOps
from pydantic import BaseModel, Field, field_validator

if TYPE_CHECKING:
    import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Resized images up to this many times S x S go through the exact resize-then-crop path.
MAX_RESIZED = 16
EXIF_ORIENTATION = 0x0112


class Preprocess(BaseModel):
    image_size: int = Field(gt=0)
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    channels: int = 3

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: int) -> int:
        if v not in (1, 3):
            raise ValueError("channels must be 1 or 3")
        return v

    def pil_to_tensor(self, image: Image.Image) -> "torch.Tensor":
        """PIL image -> normalised float tensor [C, S, S] (`pixels`, then `normalize`)."""
        import torch
        return self.normalize(torch.from_numpy(self.pixels(image)))

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) of an image whose short side is resized to S (torchvision's Resize(S) formula)."""
        s = self.image_size
        return (s, int(s * height / width)) if width <= height else (int(s * width / height), s)

    def pixels(self, image: Image.Image) -> np.ndarray:
        """PIL image -> 8-bit pixels [C, S, S]: upright (EXIF), 8 bits, resize the short side, centre crop.

        The pixels are those of open_clip's preprocessing (torchvision's Resize(S, bicubic) and
        CenterCrop(S)). An image whose resized size would exceed MAX_RESIZED (thin strips, whose long
        side grows with the short one) is cropped before it is resampled instead, at a cost bounded
        by S x S: the same crop, to within rounding.
        """
        image = to_8bit(upright(image))
        s = self.image_size
        w, h = image.size
        # the size the whole image would get, and the crop's offsets in it (torchvision's formulas)
        rw, rh = self.resized_size(w, h)
        left, top = int(round((rw - s) / 2.0)), int(round((rh - s) / 2.0))
        if rw * rh <= MAX_RESIZED * s * s:
            image = image.convert(self.mode).resize((rw, rh), Image.Resampling.BICUBIC)
            image = image.crop((left, top, left + s, top + s))
        else:
            image = _resize_crop(image, (left * w / rw, top * h / rh, (left + s) * w / rw, (top + s) * h / rh), s)
            image = image.convert(self.mode)
        array = np.asarray(image, dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    def fits_resize(self, width: int, height: int) -> bool:
        """Whether the whole image is resized before the crop (else, a thin strip, it is cropped first)."""
        rw, rh = self.resized_size(width, height)
        return rw * rh <= MAX_RESIZED * self.image_size ** 2

    def decode_jpegs(self, files: "list[torch.Tensor]", device: "torch.device") -> "list[torch.Tensor]":
        """JPEG files (1-D uint8 tensors on the host) -> their 8-bit pixels [C, S, S] on `device`:
        decoded there (nvjpeg on CUDA, libjpeg-turbo on the CPU), then converted, resized and
        cropped there as `pixels` does on the host (`pillow_resize`). For images `fits_resize`
        accepts, upright (EXIF orientation 1) and of mode L or RGB. Raises on a file it cannot decode."""
        from torchvision.io import ImageReadMode, decode_jpeg

        decoded = decode_jpeg(files, mode=ImageReadMode.RGB, device=device)
        s, out = self.image_size, []
        for image in decoded:
            if self.channels == 1:
                image = pillow_luma(image)
            h, w = image.shape[-2:]
            rw, rh = self.resized_size(w, h)
            left, top = int(round((rw - s) / 2.0)), int(round((rh - s) / 2.0))
            out.append(pillow_resize(image, (rh, rw), (top, left, s)))
        return out

    @property
    def mode(self) -> str:
        return "RGB" if self.channels == 3 else "L"

    def normalize(self, x: "torch.Tensor") -> "torch.Tensor":
        """[.., C, H, W] 8-bit pixels (a tensor or an array, or floats in [0, 1]) -> normalised float32,
        on x's device; grayscale input is repeated to 3 channels."""
        import torch
        x = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        if x.shape[-3] == 1 and self.channels == 3:
            x = x.expand(*x.shape[:-3], 3, *x.shape[-2:])
        mean = torch.tensor(self.mean[: self.channels], dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std[: self.channels], dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std


# --- Pillow's conversions on a device ------------------------------------------------------------
# The device path's pixels must be the host path's: the same integer arithmetic as Pillow's C code
# (Convert.c's luma, Resample.c's antialiased bicubic with a = -0.5 in 22-bit fixed point, each
# pass rounded to 8 bits), not torch's bicubic (a = -0.75). Pillow 13 runs the vertical pass first
# for some shapes (its rule is not documented); there the two differ by a level at most on photos.
PRECISION_BITS = 32 - 8 - 2


def pillow_luma(image: "torch.Tensor") -> "torch.Tensor":
    """[3, H, W] uint8 RGB -> [1, H, W] uint8 L, as Pillow's convert("L")."""
    import torch
    rgb = image.to(torch.int64)
    return ((rgb[0] * 19595 + rgb[1] * 38470 + rgb[2] * 7471 + 0x8000) >> 16).to(image.dtype)[None]


def _bicubic(x: np.ndarray) -> np.ndarray:
    a, x = -0.5, np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


@functools.lru_cache(maxsize=512)
def bicubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's resampling of a line of `in_size` pixels to `out_size`: per output pixel, the input
    indices [out, taps] and their fixed-point integer coefficients [out, taps] (0 where unused)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    taps = int(math.ceil(support)) * 2 + 1
    index = np.zeros((out_size, taps), dtype=np.int64)
    weight = np.zeros((out_size, taps), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        k = _bicubic((np.arange(lo, hi) - center + 0.5) / filterscale)
        if k.sum() != 0:
            k = k / k.sum()
        fixed = k * (1 << PRECISION_BITS)
        index[xx, :hi - lo] = np.arange(lo, hi)
        weight[xx, :hi - lo] = np.trunc(np.where(k < 0, fixed - 0.5, fixed + 0.5))  # C's (int) cast
    return index, weight


def _resample(x: "torch.Tensor", taps: tuple[np.ndarray, np.ndarray], dim: int) -> "torch.Tensor":
    """One pass along `dim` (-1 or -2) of a float64 integer-valued image, rounded and clipped to 8 bits."""
    import torch
    index, weight = (torch.from_numpy(t).to(x.device) for t in taps)
    if dim == -2:
        return _resample(x.transpose(-1, -2), taps, -1).transpose(-1, -2)
    gathered = x[..., index]  # [C, H, out, taps]
    acc = (gathered * weight).sum(-1) + (1 << (PRECISION_BITS - 1))  # exact: integers below 2^53
    return torch.floor(acc / (1 << PRECISION_BITS)).clamp_(0, 255)


def pillow_resize(image: "torch.Tensor", size: tuple[int, int], crop: tuple[int, int, int]) -> "torch.Tensor":
    """[C, H, W] uint8 -> Pillow's `resize((w, h), BICUBIC)` then the S x S crop at (top, left), on the
    image's device; only the crop's rows and columns are computed."""
    import torch
    (h, w), (rh, rw) = image.shape[-2:], size
    top, left, s = crop
    x = image.to(torch.float64)
    if rw != w:
        index, weight = bicubic_taps(w, rw)
        x = _resample(x, (index[left:left + s], weight[left:left + s]), -1)
    else:
        x = x[..., left:left + s]
    if rh != h:
        index, weight = bicubic_taps(h, rh)
        x = _resample(x, (index[top:top + s], weight[top:top + s]), -2)
    else:
        x = x[..., top:top + s, :]
    return x.to(torch.uint8)


# Modes with more than 8 bits per channel, and the value that maps to 255. Pillow's own
# convert() clips these to 0..255 instead of scaling, which reads a 16-bit photo as black and white.
WIDE_MODES: dict[str, float] = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535}


def to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit and float grayscale to 8 bits; other modes are returned as they are.

    `I;16*`: 0..65535. `I` (16-bit PGM/PPM and PNG, 32-bit TIFF): 0..65535 when every value fits,
    else 0..2^31-1. `F` (float TIFF): 0..1 when every value fits, else 0..255. Negative values clip to 0.
    """
    if image.mode not in WIDE_MODES and image.mode not in ("I", "F"):
        return image
    array = np.asarray(image, dtype=np.float64)
    top: Optional[float] = WIDE_MODES.get(image.mode)
    if top is None:
        peak = float(array.max()) if array.size else 0.0
        if image.mode == "I":
            top = 65535 if peak <= 65535 else 2**31 - 1
        else:
            top = 1.0 if peak <= 1.0 else 255.0
    scaled = np.rint(np.clip(array, 0, top) * (255.0 / top)).astype(np.uint8)
    return Image.fromarray(scaled, "L")


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phone photos store the pixels sideways and say so there)."""
    if image.getexif().get(EXIF_ORIENTATION, 1) in (None, 1):
        return image  # no copy of the (possibly large) image when there is nothing to turn
    return ImageOps.exif_transpose(image)


def _resize_crop(image: Image.Image, box: tuple[float, float, float, float], size: int) -> Image.Image:
    """Resample only `box` of `image` to size x size: crop its preimage plus the bicubic support first."""
    w, h = image.size
    margin_x = 2 * max(1.0, (box[2] - box[0]) / size) + 2
    margin_y = 2 * max(1.0, (box[3] - box[1]) / size) + 2
    x0, y0 = max(0, math.floor(box[0] - margin_x)), max(0, math.floor(box[1] - margin_y))
    x1, y1 = min(w, math.ceil(box[2] + margin_x)), min(h, math.ceil(box[3] + margin_y))
    region = image.crop((x0, y0, x1, y1))
    if region.mode in ("P", "1"):  # Pillow resamples these with NEAREST only
        region = region.convert("RGB")
    return region.resize((size, size), Image.Resampling.BICUBIC, box=(box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0))
