"""cluster.yaml is a valid Ray cluster launcher config (the JSON schema shipped with ray)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def load_cluster_yaml() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_matches_ray_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(load_cluster_yaml(), schema)


def test_cluster_yaml_shape():
    cfg = load_cluster_yaml()
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0  # CPU head: restore actors go to GPU workers
    gpu_workers = [t for name, t in types.items() if name != cfg["head_node_type"] and t["resources"].get("GPU")]
    assert gpu_workers and all(t["min_workers"] < t["max_workers"] for t in gpu_workers)  # autoscaling
    assert any("pip install -e ." in c for c in cfg["setup_commands"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "RAY_AUTH_MODE=token" in " ".join(cfg[key])


def test_schema_rejects_a_broken_config():
    """The check can fail: a node type without resources is refused."""
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = load_cluster_yaml()
    del cfg["available_node_types"]["worker_gpu"]["resources"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, schema)
