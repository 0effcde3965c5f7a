"""Versioned model artifacts on any pyarrow filesystem, with integrity checks.

Layout under the storage root::

    models/<model>/aliases.json                 {"format": 1, "aliases": {"champion": "v0002"}}
    models/<model>/versions/v0001/weights.safetensors
                                  transform.json
                                  meta.json
                                  reference.parquet
                                  MANIFEST.json   <- written LAST: the commit marker

A version directory without ``MANIFEST.json`` is incomplete (a writer died
half-way): it is not listed and never loaded. Every load checks each file's
sha256 and size against the manifest first (rule 7); weights are safetensors,
never pickle. A new version's number is claimed first (``claim.json``, created
only if absent: :meth:`~lifelong_ray.storage.Storage.create_exclusive`), so two
writers registering at once (two retrain jobs, two controllers) get two numbers.

    >>> import tempfile, numpy as np, pyarrow as pa, torch
    >>> from lifelong_ray.config import EstimatorConfig, FeatureSpec, LabelSpec, ModelSpec
    >>> from lifelong_ray.data.schema import Schema
    >>> from lifelong_ray.data.transform import FeatureTransform
    >>> from lifelong_ray.storage import Storage
    >>> from lifelong_ray.training.estimators import build_module
    >>> schema = Schema(ModelSpec(name="m", features=[FeatureSpec(name="x")],
    ...                           label=LabelSpec(name="y", classes=[0, 1])))
    >>> cols = {"x": np.array([0.0, 1.0, 2.0])}
    >>> est = EstimatorConfig(kind="logistic")
    >>> module = build_module(est, 1, 2)
    >>> reg = Registry(Storage(tempfile.mkdtemp()), "m")
    >>> v = reg.register(state_dict=module.state_dict(), transform=FeatureTransform.fit(cols, schema),
    ...                  estimator=est, n_in=1, classes=[0, 1], reference=pa.table({"x": cols["x"]}),
    ...                  metadata={"job_id": "job-1", "created_at": 0.0})
    >>> v, reg.list_versions(), reg.find_by_job("job-1")
    ('v0001', ['v0001'], 'v0001')
    >>> reg.register(state_dict=module.state_dict(), transform=FeatureTransform.fit(cols, schema),
    ...              estimator=est, n_in=1, classes=[0, 1], reference=pa.table({"x": cols["x"]}),
    ...              metadata={"job_id": "job-1"})   # same job: no new version
    'v0001'
    >>> reg.set_alias("champion", v); reg.aliases()
    {'champion': 'v0001'}
    >>> reg.load(reg.resolve("champion")).predict(cols)[0].shape
    (3,)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from lifelong_ray.config import EstimatorConfig
from lifelong_ray.data.transform import FeatureTransform
from lifelong_ray.registry.model import LoadedModel
from lifelong_ray.storage import Storage
from lifelong_ray.training.estimators import build_module

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
CLAIM = "claim.json"  # created exclusively before anything else: the version number is taken
WEIGHTS, TRANSFORM, META, REFERENCE = "weights.safetensors", "transform.json", "meta.json", "reference.parquet"
ARTIFACT_FILES = (WEIGHTS, TRANSFORM, META, REFERENCE)
_FORMAT = 1
_VERSION_RE = re.compile(r"^v(\d{4,})$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class IntegrityError(RuntimeError):
    """A committed version whose files are missing or do not match its manifest."""


class UnknownVersion(ValueError):
    """The version does not exist or is not committed."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Registry:
    """Versions and aliases of one model, stored under ``models/<model>/``."""

    def __init__(self, storage: Storage, model: str) -> None:
        if not _NAME_RE.match(model):
            raise ValueError(f"model name {model!r} must match {_NAME_RE.pattern}")
        self.storage = storage
        self.model = model
        self.root = f"models/{model}"
        self._meta_cache: dict[str, dict[str, Any]] = {}  # committed versions are immutable

    # -- paths -----------------------------------------------------------------
    def _vdir(self, version: str) -> str:
        if not _VERSION_RE.match(version):
            raise UnknownVersion(f"{version!r} is not a version name (expected like 'v0001')")
        return f"{self.root}/versions/{version}"

    def _all_version_dirs(self) -> list[str]:
        """Every version directory, committed or not."""
        return [d for d in self.storage.list_dirs(f"{self.root}/versions") if _VERSION_RE.match(d)]

    # -- listing ---------------------------------------------------------------
    def list_versions(self) -> list[str]:
        """Committed versions (those with a manifest), oldest first."""
        prefix = f"{self.root}/versions"
        out = []
        for rel in self.storage.list(prefix, suffix=MANIFEST):
            parts = rel[len(prefix) + 1 :].split("/")
            if len(parts) == 2 and parts[1] == MANIFEST and _VERSION_RE.match(parts[0]):
                out.append(parts[0])
        return sorted(out, key=lambda v: int(v[1:]))

    def _next_version(self) -> str:
        # after the highest directory, committed or not: never write into a directory
        # another (possibly still running) writer started
        nums = [int(d[1:]) for d in self._all_version_dirs()]
        return f"v{max(nums, default=0) + 1:04d}"

    def _claim_version(self, job_id: str | None) -> str:
        """The next free version number, taken for this writer alone."""
        body = json.dumps({"job_id": job_id}).encode()
        while True:
            version = self._next_version()
            if self.storage.create_exclusive(f"{self._vdir(version)}/{CLAIM}", body):
                return version

    # -- verified reads ----------------------------------------------------------
    def _manifest(self, version: str) -> dict[str, Any]:
        path = f"{self._vdir(version)}/{MANIFEST}"
        if not self.storage.exists(path):
            raise UnknownVersion(f"model {self.model} has no committed version {version}")
        try:
            man = json.loads(self.storage.read_bytes(path))
            files = man["files"]
        except (ValueError, KeyError, TypeError) as err:
            raise IntegrityError(f"{self.model} {version}: {MANIFEST} is unreadable: {err}") from None
        missing = [f for f in ARTIFACT_FILES if f not in files]
        if missing:
            raise IntegrityError(f"{self.model} {version}: {MANIFEST} does not list {missing}")
        return man

    def _read_verified(self, version: str, names: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The manifest's file table and the bytes of ``names``, each checked against it."""
        files = self._manifest(version)["files"]
        out: dict[str, bytes] = {}
        for name in names:
            path = f"{self._vdir(version)}/{name}"
            try:
                data = self.storage.read_bytes(path)
            except OSError:  # a missing file is corruption; any other I/O error propagates
                if self.storage.exists(path):
                    raise
                raise IntegrityError(f"{self.model} {version}: {name} is missing") from None
            want = files[name]
            if len(data) != want["size"] or _sha256(data) != want["sha256"]:
                raise IntegrityError(
                    f"{self.model} {version}: {name} does not match {MANIFEST} "
                    f"(sha256 {_sha256(data)[:12]}…, size {len(data)}; "
                    f"expected {want['sha256'][:12]}…, size {want['size']})")
            out[name] = data
        return files, out

    def metadata(self, version: str) -> dict[str, Any]:
        """meta.json of a committed version (verified), plus ``files`` from the manifest."""
        if version not in self._meta_cache:
            files, blobs = self._read_verified(version, (META,))
            meta = json.loads(blobs[META])
            meta["files"] = files
            self._meta_cache[version] = meta
        return json.loads(json.dumps(self._meta_cache[version]))  # a private copy

    def find_by_job(self, job_id: str) -> str | None:
        """The committed version registered by ``job_id``, if any (newest first)."""
        for v in reversed(self.list_versions()):
            try:
                if self.metadata(v).get("job_id") == job_id:
                    return v
            except IntegrityError as err:
                log.warning("skipping corrupt version while looking up job %s: %s", job_id, err)
        return None

    def load(self, version: str) -> LoadedModel:
        """Verify every file of ``version``, then rebuild the module and its transform."""
        files, blobs = self._read_verified(version, ARTIFACT_FILES)
        meta = json.loads(blobs[META])
        meta["files"] = files
        est = EstimatorConfig.model_validate(meta["estimator"])
        classes = [int(c) for c in meta["classes"]]
        module = build_module(est, int(meta["n_in"]), len(classes))
        module.load_state_dict(st_load(blobs[WEIGHTS]), strict=True)
        module.eval()
        transform = FeatureTransform.from_json(json.loads(blobs[TRANSFORM]))
        return LoadedModel(version=version, transform=transform, module=module, classes=classes, metadata=meta)

    def reference(self, version: str) -> pa.Table:
        """The raw feature sample saved with ``version`` (for drift checks), verified."""
        _, blobs = self._read_verified(version, (REFERENCE,))
        return pq.read_table(pa.BufferReader(blobs[REFERENCE]))

    # -- writing ---------------------------------------------------------------
    def register(
        self,
        *,
        state_dict: dict[str, torch.Tensor],
        transform: FeatureTransform,
        estimator: EstimatorConfig,
        n_in: int,
        classes: list[int],
        reference: pa.Table,
        metadata: dict[str, Any],
    ) -> str:
        """Write a new committed version and return its name.

        Idempotent by ``metadata['job_id']``: a job already registered returns its
        version. The registry adds ``model``, ``version``, ``created_at`` (kept
        from ``metadata`` if given), ``estimator``, ``n_in``, ``classes`` and
        ``feature_names`` to meta.json; ``metadata()`` adds the manifest's ``files``.
        """
        job_id = metadata.get("job_id")
        if job_id is not None:
            existing = self.find_by_job(job_id)
            if existing is not None:
                log.info("job %s already registered as %s %s", job_id, self.model, existing)
                return existing
        classes = [int(c) for c in classes]
        if transform.n_out != n_in:
            raise ValueError(f"transform gives {transform.n_out} features but n_in is {n_in}")
        tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state_dict.items()}
        # fail now, not at load time, if the weights do not fit the architecture
        build_module(estimator, n_in, len(classes)).load_state_dict(tensors, strict=True)

        version = self._claim_version(job_id)
        meta = {
            **metadata,
            "model": self.model,
            "version": version,
            "created_at": float(metadata.get("created_at", time.time())),
            "estimator": estimator.model_dump(mode="json"),
            "n_in": int(n_in),
            "classes": classes,
            "feature_names": transform.feature_names,
        }
        meta.pop("files", None)
        buf = io.BytesIO()
        pq.write_table(reference, buf)
        blobs = {
            WEIGHTS: st_save(tensors, metadata={"model": self.model, "version": version}),
            TRANSFORM: json.dumps(transform.to_json(), indent=1, sort_keys=True).encode(),
            META: json.dumps(meta, indent=1, sort_keys=True).encode(),  # raises if not JSON-able
            REFERENCE: buf.getvalue(),
        }
        vdir = self._vdir(version)
        for name, data in blobs.items():
            self.storage.write_bytes(f"{vdir}/{name}", data)
        manifest = {
            "format": _FORMAT,
            "model": self.model,
            "version": version,
            "files": {n: {"sha256": _sha256(d), "size": len(d)} for n, d in blobs.items()},
        }
        self.storage.write_json(f"{vdir}/{MANIFEST}", manifest)  # the commit marker, last
        log.info("registered %s %s (job %s)", self.model, version, job_id)
        return version

    # -- aliases ---------------------------------------------------------------
    def aliases(self) -> dict[str, str]:
        """e.g. ``{"champion": "v0002", "canary": "v0003"}``."""
        data = self.storage.read_json(f"{self.root}/aliases.json", default={})
        return dict(data.get("aliases", {}))

    def set_alias(self, alias: str, version: str | None) -> None:
        """Point ``alias`` at a committed version; ``None`` removes it."""
        if not _NAME_RE.match(alias) or _VERSION_RE.match(alias):
            raise ValueError(f"alias {alias!r} must match {_NAME_RE.pattern} and not look like a version")
        current = self.aliases()
        if version is None:
            if alias not in current:
                return
            current.pop(alias)
        else:
            if version not in self.list_versions():
                raise UnknownVersion(f"cannot point alias {alias!r} at {version!r}: "
                                     f"model {self.model} has no committed version {version!r}")
            current[alias] = version
        self.storage.write_json(f"{self.root}/aliases.json", {"format": _FORMAT, "aliases": current})

    def resolve(self, name: str) -> str:
        """A version name, or the version an alias points to."""
        if _VERSION_RE.match(name):
            return name
        try:
            return self.aliases()[name]
        except KeyError:
            raise UnknownVersion(f"model {self.model} has no alias or version {name!r}") from None
