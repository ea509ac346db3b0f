"""A family's id from what determines it, so a rerun or a resume publishes the same family."""
from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel

from models_store.zoo import Zoo


def family_id(prefix: str, zoo: Zoo, config: BaseModel, unlabeled_specs: dict[str, str],
              exclude: frozenset[str] = frozenset()) -> str:
    """`<prefix>-<12 hex>`: a hash of the zoo (its identity and its tensor files' sha256, as the
    zoo records them), the config (less `exclude`) and the data specs."""
    blob = json.dumps([zoo.manifest.identity(), zoo.weights_sha256,
                       config.model_dump(exclude=set(exclude)), unlabeled_specs], sort_keys=True)
    return f"{prefix.replace('++', 'pp')}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
