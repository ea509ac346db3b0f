"""Service settings: environment variables `PMERGE_<FIELD>`, overridden by `pmerge serve`'s flags,
read into groups (engine, limits, topology, caches) whose field names stay the public flat names.

The README's "Settings" table documents every field (tests/service/test_readme.py checks that it
names each); docs/serving.md says what the bounds protect.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from models_store.family import is_family_id, shown_id

if TYPE_CHECKING:
    import torch

MiB = 1 << 20
GiB = 1 << 30
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # names of torch dtypes


ENV_PREFIX = "PMERGE_"


class EngineSettings(BaseModel):
    """How the engine batches and runs a family's requests."""
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: a CUDA GPU when there is one")
    dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="GPU precision (the CPU always runs fp32)")
    max_batch: int = Field(64, ge=1, description="images per forward pass")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits to fill")
    queue_size: int = Field(1024, ge=1, description="images queued before 503")
    cuda_graphs: bool = Field(True, description="on CUDA, replay each forward from a CUDA graph captured per "
                                                "batch size (one launch instead of hundreds)")
    decode: Literal["auto", "host", "device"] = Field("auto", description="where JPEG images are decoded: auto "
                                                       "(on the device on CUDA), host (always on the CPU), device "
                                                       "(on the engine's device, the CPU too)")
    decode_threads: int = Field(4, ge=1)

    def torch_device(self) -> "torch.device":
        from models_store.device import pick_device
        return pick_device(self.device)

    def torch_dtype(self, device: "torch.device") -> "torch.dtype":
        import torch
        # reduced precision only where it pays: CPU bf16/fp16 matmuls are slow or missing
        return getattr(torch, DTYPES[self.dtype]) if device.type == "cuda" else torch.float32


class Limits(BaseModel):
    """What one request, one connection and the whole server may cost (docs/serving.md)."""
    max_files: int = Field(64, ge=1)
    max_upload_bytes: int = Field(20 * MiB, ge=1)
    max_inflight_bytes: int = Field(256 * MiB, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(60.0, gt=0)
    keepalive_timeout_s: float = Field(5.0, gt=0)
    max_connections: int = Field(512, ge=1)


class Topology(BaseModel):
    """Where the server listens and which processes it runs."""
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    front_ends: Optional[int] = Field(None, ge=0, description="HTTP front-end processes that parse, check and "
                                                              "decode for the one engine process (unset: one per core "
                                                              "but one, at most 8; 0: one process does all)")
    shared_memory_bytes: int = Field(256 * MiB, ge=MiB, description="shared memory of the decoded images in flight "
                                                                     "from the front ends to the engine, all front "
                                                                     "ends together")

    def front_end_count(self) -> int:
        """How many front-end processes `pmerge serve` starts (0: none, the one process serves)."""
        if self.front_ends is not None:
            return self.front_ends
        return max(1, min(8, (os.cpu_count() or 2) - 1))


class Caches(BaseModel):
    """What is kept for reuse: families resident, variants on the device, checkpoints on disk."""
    max_families: int = Field(4, ge=1, description="families resident at once, each with its engine (least "
                                                   "recently used out, never one with requests in flight)")
    device_cache_bytes: Optional[int] = Field(None, ge=1, description=(
        "what a family's servable keeps materialised on the device, at most (point-set and anchored towers, "
        "feature-map maps; towers out first, least recently used, one entry always kept); default what leaves "
        "the family at three of its towers on the device, its resident tensors and cache together, one tower at "
        "least"))
    download_cache_dir: Optional[Path] = None
    download_cache_bytes: int = Field(2 * GiB, ge=0)


# each group of settings; a setting's name (its flag, its PMERGE_ variable) is its field's name, unique across groups
GROUPS: dict[str, type[BaseModel]] = {"engine": EngineSettings, "limits": Limits, "topology": Topology,
                                      "caches": Caches}
RENAMED = {"front_ends": "PMERGE_FRONTS"}  # a variable's old name, read until the next release


class GroupedEnvironment(PydanticBaseSettingsSource):
    """The grouped settings from their flat variables (PMERGE_MAX_BATCH, not PMERGE_ENGINE__MAX_BATCH): the
    variables are public names, the groups are how the code reads them."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # every value comes from __call__

    def __call__(self) -> dict[str, Any]:
        if "PMERGE_CACHED_TOWERS" in os.environ:  # a count of towers, until the one byte bound of every kind
            raise ValueError("PMERGE_CACHED_TOWERS is now PMERGE_DEVICE_CACHE_BYTES (bytes, for every kind); "
                             "unset it and set that instead")
        out: dict[str, Any] = {}
        for group, model in GROUPS.items():
            for name in model.model_fields:
                for variable in (ENV_PREFIX + name.upper(), RENAMED.get(name)):
                    if variable and variable in os.environ:
                        out.setdefault(group, {})[name] = os.environ[variable]
                        break
        return out


class Settings(BaseSettings):
    """Every setting of the service, parsed once: init values (flags) over PMERGE_* variables over defaults."""
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    store: Path = Field(Path("store"), description="the family store directory")
    family: Optional[str] = Field(None, description="the default family, served by the routes without a "
                                                    "/families/{id} prefix (unset: the first of `families`, else the "
                                                    "newest valid one)")
    families: Annotated[Optional[list[str]], NoDecode] = Field(
        None, description="comma-separated ids of the families served under /families/{id}/ (unset: every family of "
                          "the store, found when first asked for)")
    api_key: Optional[SecretStr] = None
    engine: EngineSettings = Field(default_factory=EngineSettings)
    limits: Limits = Field(default_factory=Limits)
    topology: Topology = Field(default_factory=Topology)
    caches: Caches = Field(default_factory=Caches)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, GroupedEnvironment(settings_cls), env_settings

    @model_validator(mode="before")
    @classmethod
    def _grouped(cls, data: Any) -> Any:
        """A setting given by its flat name (a flag, `Settings(max_batch=8)`, Ray Serve's args) goes to its
        group, over the group's value from the environment."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for group, model in GROUPS.items():
            given = {name: data.pop(name) for name in model.model_fields if name in data}
            if given:
                inner = data.get(group)
                base = inner.model_dump() if isinstance(inner, BaseModel) else dict(inner or {})
                data[group] = base | given
        return data

    @field_validator("families", mode="before")
    @classmethod
    def _family_ids(cls, v: Any) -> Any:
        # the error names the bad id
        return parse_family_ids(",".join(v) if isinstance(v, list) else v)

    @classmethod
    def fields(cls) -> dict[str, FieldInfo]:
        """Every setting by its one name (flag and PMERGE_ variable), the groups' fields included."""
        top = {n: f for n, f in cls.model_fields.items() if n not in GROUPS}
        return top | {n: f for model in GROUPS.values() for n, f in model.model_fields.items()}

    def replace(self, **values: Any) -> "Settings":
        """These settings with some changed, by their flat names (validated)."""
        return type(self).model_validate(self.model_dump() | values)

    @property
    def downloads_dir(self) -> Path:
        # inside the store but without manifest.json: list_families/family_path never see it
        return self.caches.download_cache_dir or self.store / ".downloads"


def parse_family_ids(text: Optional[str]) -> Optional[list[str]]:
    """PMERGE_FAMILIES: comma-separated ids; unset or empty: every family of the store."""
    if not text or not text.strip():
        return None
    ids = [i.strip() for i in text.split(",") if i.strip()]
    bad = [i for i in ids if not is_family_id(i)]
    if bad:
        raise ValueError(f"{shown_id(bad[0])} is not a family id (letters, digits, _ . + -)")
    return ids
