"""Registry: versions, integrity manifest, idempotent registration, aliases."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from lifelong_ray.config import EstimatorConfig, FeatureSpec, LabelSpec, ModelSpec
from lifelong_ray.data.schema import Schema
from lifelong_ray.data.transform import FeatureTransform, columns_from_table
from lifelong_ray.registry import IntegrityError, LoadedModel, Registry, UnknownVersion
from lifelong_ray.storage import Storage
from lifelong_ray.training.estimators import build_module, predict_proba

CLASSES = [3, 5, 9]


@pytest.fixture
def schema():
    return Schema(ModelSpec(
        name="m",
        features=[FeatureSpec(name="x"), FeatureSpec(name="z"),
                  FeatureSpec(name="c", dtype="category", categories=["a", "b"], nullable=True)],
        label=LabelSpec(name="y", classes=CLASSES)))


@pytest.fixture
def table():
    rng = np.random.default_rng(1)
    n = 64
    return pa.table({"x": rng.normal(size=n), "z": rng.normal(3, 2, size=n),
                     "c": rng.choice(["a", "b"], size=n).tolist()})


@pytest.fixture
def parts(schema, table):
    torch.manual_seed(0)
    cols = columns_from_table(table, schema)
    transform = FeatureTransform.fit(cols, schema)
    est = EstimatorConfig(kind="mlp", hidden=[8])
    module = build_module(est, transform.n_out, len(CLASSES))
    return {"cols": cols, "transform": transform, "est": est, "module": module}


def _register(reg, parts, table, **meta):
    return reg.register(state_dict=parts["module"].state_dict(), transform=parts["transform"],
                        estimator=parts["est"], n_in=parts["transform"].n_out, classes=CLASSES,
                        reference=table, metadata=meta)


@pytest.fixture
def reg(tmp_path):
    return Registry(Storage(str(tmp_path)), "m")


def test_register_list_load_predict_identical(reg, parts, table):
    meta = {"metrics": {"accuracy": 0.9}, "job_id": "j1", "seed": 0, "created_at": 123.0,
            "window": {"rows": 64, "since_t": 0, "until_t": 10}, "parent": None}
    v = _register(reg, parts, table, **meta)
    assert v == "v0001" and reg.list_versions() == ["v0001"]
    loaded = reg.load(v)
    assert isinstance(loaded, LoadedModel) and loaded.version == v and loaded.classes == CLASSES
    assert not loaded.module.training
    want = predict_proba(parts["module"], parts["transform"].apply(parts["cols"]))
    np.testing.assert_array_equal(loaded.predict_proba(parts["cols"]), want)
    labels, conf = loaded.predict(parts["cols"])
    assert labels.dtype == np.int64 and conf.dtype == np.float64
    np.testing.assert_array_equal(labels, np.array(CLASSES)[want.argmax(axis=1)])
    np.testing.assert_array_equal(conf, want.max(axis=1))
    md = reg.metadata(v)
    assert md["version"] == v and md["created_at"] == 123.0 and md["metrics"] == {"accuracy": 0.9}
    assert md["window"]["rows"] == 64 and md["n_in"] == parts["transform"].n_out
    assert set(md["files"]) == {"weights.safetensors", "transform.json", "meta.json", "reference.parquet"}
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in md["files"].values())
    assert loaded.metadata == md
    assert reg.reference(v).equals(table)


def test_created_at_defaults_to_now(reg, parts, table):
    v = _register(reg, parts, table)
    assert reg.metadata(v)["created_at"] > 1.6e9


def test_weights_are_safetensors_not_pickle(reg, parts, table, tmp_path):
    v = _register(reg, parts, table)
    raw = (tmp_path / f"models/m/versions/{v}/weights.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8:8 + header_len])  # safetensors header, not a pickle stream


@pytest.mark.parametrize("name", ["weights.safetensors", "transform.json", "meta.json", "reference.parquet"])
def test_tampered_file_raises_integrity_error(reg, parts, table, tmp_path, name):
    v = _register(reg, parts, table)
    path = tmp_path / f"models/m/versions/{v}/{name}"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=name.replace(".", r"\.")):
        reg.load(v)


def test_tampered_weights_same_size(reg, parts, table, tmp_path):
    v = _register(reg, parts, table)
    path = tmp_path / f"models/m/versions/{v}/weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # flip one bit of the last float
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="weights.safetensors"):
        reg.load(v)
    with pytest.raises(IntegrityError):  # fresh registry, no cache
        Registry(reg.storage, "m").load(v)


def test_missing_file_raises_integrity_error(reg, parts, table, tmp_path):
    v = _register(reg, parts, table)
    (tmp_path / f"models/m/versions/{v}/reference.parquet").unlink()
    with pytest.raises(IntegrityError, match="reference.parquet is missing"):
        reg.reference(v)
    with pytest.raises(IntegrityError, match="reference.parquet"):
        reg.load(v)


def test_incomplete_version_is_ignored(reg, parts, table, tmp_path):
    assert _register(reg, parts, table, job_id="j1") == "v0001"
    assert _register(reg, parts, table, job_id="j2") == "v0002"
    (tmp_path / "models/m/versions/v0002/MANIFEST.json").unlink()  # died before commit
    assert reg.list_versions() == ["v0001"]
    with pytest.raises(UnknownVersion):
        reg.load("v0002")
    with pytest.raises(ValueError):
        reg.set_alias("champion", "v0002")
    assert reg.find_by_job("j2") is None
    # retrying the job commits a new version; the incomplete number is skipped
    assert _register(reg, parts, table, job_id="j2") == "v0003"
    assert reg.list_versions() == ["v0001", "v0003"]


def test_idempotent_by_job_id(reg, parts, table):
    v1 = _register(reg, parts, table, job_id="job-a")
    assert _register(reg, parts, table, job_id="job-a") == v1
    assert Registry(reg.storage, "m").register(
        state_dict=parts["module"].state_dict(), transform=parts["transform"], estimator=parts["est"],
        n_in=parts["transform"].n_out, classes=CLASSES, reference=table,
        metadata={"job_id": "job-a"}) == v1
    v2 = _register(reg, parts, table, job_id="job-b")
    assert v2 == "v0002" and reg.list_versions() == [v1, v2]
    assert reg.find_by_job("job-b") == v2 and reg.find_by_job("nope") is None


def test_numbering_continues_after_reload(tmp_path, parts, table):
    reg = Registry(Storage(str(tmp_path)), "m")
    _register(reg, parts, table)
    _register(reg, parts, table)
    reg2 = Registry(Storage(str(tmp_path)), "m")
    assert reg2.list_versions() == ["v0001", "v0002"]
    assert _register(reg2, parts, table) == "v0003"
    # another model in the same store has its own numbering
    assert _register(Registry(Storage(str(tmp_path)), "other"), parts, table) == "v0001"


def test_aliases(reg, parts, table):
    assert reg.aliases() == {}
    v1, v2 = _register(reg, parts, table), _register(reg, parts, table)
    reg.set_alias("champion", v1)
    reg.set_alias("canary", v2)
    assert reg.aliases() == {"champion": v1, "canary": v2}
    assert Registry(reg.storage, "m").aliases() == {"champion": v1, "canary": v2}
    assert reg.resolve("canary") == v2 and reg.resolve(v1) == v1
    reg.set_alias("champion", v2)
    reg.set_alias("canary", None)
    reg.set_alias("canary", None)  # removing twice is fine
    assert reg.aliases() == {"champion": v2}
    with pytest.raises(ValueError, match="v0009"):
        reg.set_alias("champion", "v0009")
    with pytest.raises(ValueError):
        reg.set_alias("champion", "latest")
    with pytest.raises(ValueError):
        reg.resolve("shadow")
    assert reg.aliases() == {"champion": v2}


def test_register_rejects_inconsistent_inputs(reg, parts, table):
    with pytest.raises(ValueError, match="n_in"):
        reg.register(state_dict=parts["module"].state_dict(), transform=parts["transform"],
                     estimator=parts["est"], n_in=99, classes=CLASSES, reference=table, metadata={})
    with pytest.raises(RuntimeError):  # weights of another architecture
        reg.register(state_dict=parts["module"].state_dict(), transform=parts["transform"],
                     estimator=EstimatorConfig(kind="logistic"), n_in=parts["transform"].n_out,
                     classes=CLASSES, reference=table, metadata={})
    with pytest.raises(TypeError):  # metadata must be JSON
        _register(reg, parts, table, bad=object())
    assert reg.list_versions() == []


@pytest.mark.parametrize("uri", ["file", "mock"])
def test_works_on_pyarrow_uris(tmp_path, parts, table, uri):
    root = f"file://{tmp_path}/store" if uri == "file" else "mock:///store"
    storage = Storage(root)
    reg = Registry(storage, "m")
    v = _register(reg, parts, table, job_id="j")
    assert reg.list_versions() == [v] and reg.find_by_job("j") == v
    np.testing.assert_array_equal(reg.load(v).predict_proba(parts["cols"]),
                                  predict_proba(parts["module"], parts["transform"].apply(parts["cols"])))
    reg.set_alias("champion", v)
    assert reg.aliases() == {"champion": v}
    storage.write_bytes(f"models/m/versions/{v}/weights.safetensors", b"garbage")
    with pytest.raises(IntegrityError, match="weights.safetensors"):
        Registry(storage, "m").load(v)
