"""The contract between trainer and service: zoo and family formats, preferences, family math.

Imports neither `trainer` nor `service`.
"""

class StoreError(Exception):
    """A zoo or family on disk is missing, malformed, tampered with, or of an unknown format."""
