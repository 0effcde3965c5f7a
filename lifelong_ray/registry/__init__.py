"""Model registry: versioned artifacts with sha256 manifests, and aliases.

See :mod:`lifelong_ray.registry.store` for the layout and a worked example.
"""

from lifelong_ray.registry.model import LoadedModel
from lifelong_ray.registry.store import IntegrityError, Registry, UnknownVersion

__all__ = ["IntegrityError", "LoadedModel", "Registry", "UnknownVersion"]
