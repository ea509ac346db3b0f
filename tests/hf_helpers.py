"""Tiny random transformers CLIP models saved with save_pretrained (no network): the sources of
the Hugging Face import tests."""
from __future__ import annotations

import copy
import string
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModel,
                          CLIPVisionModelWithProjection)

# B/32 and L/14 as transformers configures them (patch, width, heads, MLP, activation), 1 layer
B32 = dict(image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
           projection_dim=512, hidden_act="quick_gelu", num_hidden_layers=1)
L14 = dict(image_size=224, patch_size=14, hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
           projection_dim=768, hidden_act="quick_gelu", num_hidden_layers=1)
TINY = dict(image_size=16, patch_size=8, hidden_size=32, intermediate_size=64, num_attention_heads=2,
            projection_dim=16, hidden_act="gelu", num_hidden_layers=2)
VOCAB = ["<|startoftext|>", "<|endoftext|>", *string.ascii_lowercase, *(c + "</w>" for c in string.ascii_lowercase),
         ".", ".</w>"]
KINDS = {"vision": CLIPVisionModel, "projection": CLIPVisionModelWithProjection}


def vision_model(kind: str, seed: int = 0, **config):
    """A random CLIPVisionModel(WithProjection), or with kind "clip" a whole CLIPModel with a tiny text tower."""
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(**config)
    if kind == "clip":
        text = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              vocab_size=64, max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                     projection_dim=vision.projection_dim))
    else:
        model = KINDS[kind](vision)
    return randomise_norms(model.eval(), seed)


@torch.no_grad()
def randomise_norms(model, seed: int):
    """Layer norms away from (1, 0), so a mapping that swaps two of them shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return model


@torch.no_grad()
def fine_tuned(model, seed: int, scale: float = 0.02):
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    for p in out.parameters():
        p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=g))
    return out


def save(model, directory: Path, tokenizer: bool = False) -> Path:
    model.save_pretrained(directory)
    if tokenizer:
        CLIPTokenizer(vocab={t: i for i, t in enumerate(VOCAB)}, merges=[]).save_pretrained(directory)
    return directory


def save_head(directory: Path, classes: int, dim: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    save_file({"weight": 10 * torch.randn(classes, dim, generator=g), "bias": torch.randn(classes, generator=g)},
              directory / "head.safetensors")


def features(model, images: torch.Tensor) -> torch.Tensor:
    """transformers' own image features: image_embeds, the pooled output, or get_image_features."""
    with torch.no_grad():
        if isinstance(model, CLIPModel):
            out = model.get_image_features(pixel_values=images)
            return out if torch.is_tensor(out) else out.pooler_output  # transformers 5: a model output
        out = model(pixel_values=images)
        return out.image_embeds if isinstance(model, CLIPVisionModelWithProjection) else out.pooler_output
