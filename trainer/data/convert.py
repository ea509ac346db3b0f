"""uint8 image arrays -> normalised float tensors, in batches (fast) and in chunks (modest memory)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models_store.preprocess import Preprocess

# ITU-R 601-2 luma, the weights PIL uses for convert("L"), so gray here matches gray in the service.
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
_CHUNK = 1024


def images_to_tensor(images: np.ndarray, preprocess: Preprocess) -> torch.Tensor:
    """uint8 [N, H, W] or [N, H, W, 3] -> float32 [N, C, S, S] normalised by `preprocess`."""
    size, channels = preprocess.image_size, preprocess.channels
    out = torch.empty((len(images), channels, size, size), dtype=torch.float32)
    # Chunks bound the float intermediates; only the output is full size.
    for start in range(0, len(images), _CHUNK):
        chunk = torch.from_numpy(np.array(images[start : start + _CHUNK], dtype=np.uint8))
        out[start : start + len(chunk)] = _convert_chunk(chunk, preprocess)
    return out


def _convert_chunk(chunk: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    x = chunk.float().div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    size = preprocess.image_size
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if preprocess.channels == 1 and x.shape[1] == 3:
        x = (x * _LUMA).sum(dim=1, keepdim=True)
    # normalize() repeats grayscale to 3 channels when the model wants RGB.
    return preprocess.normalize(x.contiguous())
