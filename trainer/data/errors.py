"""The one error type of the dataset layer."""
from __future__ import annotations


class DatasetError(ValueError):
    """A dataset spec that cannot be loaded; the message names the spec, file or class at fault."""
