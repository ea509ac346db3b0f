"""Image preprocessing shared by trainer and service: one definition of what a model sees."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field, field_validator

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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

    def pil_to_tensor(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> normalised float tensor [C, S, S]: resize the short side, centre crop."""
        image = image.convert("RGB" if self.channels == 3 else "L")
        s = self.image_size
        w, h = image.size
        scale = s / min(w, h)
        image = image.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = image.size
        left, top = (w - s) // 2, (h - s) // 2
        image = image.crop((left, top, left + s, top + s))
        array = np.asarray(image, dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[:, :, None]
        return self.normalize(torch.from_numpy(array).permute(2, 0, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[.., C, H, W] in [0, 1] -> normalised; grayscale input is repeated to 3 channels."""
        if x.shape[-3] == 1 and self.channels == 3:
            x = x.expand(*x.shape[:-3], 3, *x.shape[-2:])
        mean = torch.tensor(self.mean[: self.channels], dtype=x.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std[: self.channels], dtype=x.dtype).view(-1, 1, 1)
        return (x - mean) / std
