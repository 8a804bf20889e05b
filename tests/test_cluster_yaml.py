"""cluster.yaml is a valid Ray cluster launcher config, with the node types and setup vtok needs."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _commands(config: dict[str, Any]) -> str:
    return "\n".join(config["setup_commands"])


def test_valid_against_the_autoscaler_schema(config: dict[str, Any]) -> None:
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)


def test_valid_for_rays_own_validation(config: dict[str, Any]) -> None:
    """What `ray up` runs before touching AWS: defaults filled in, then validate_config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["available_node_types"]["gpu_encode"]["max_workers"] == 8


def test_node_types(config: dict[str, Any]) -> None:
    types = config["available_node_types"]
    head, decode, gpu = types[config["head_node_type"]], types["cpu_decode"], types["gpu_encode"]
    assert gpu["resources"].get("GPU", 0) >= 1 and gpu["node_config"]["InstanceType"].startswith(("g5", "g6", "p4", "p5"))
    assert decode["resources"].get("GPU", 0) == 0 and decode["resources"]["CPU"] > 0
    # The head schedules no work: drivers and the GCS keep their CPUs.
    assert head["resources"] == {"CPU": 0}
    for name in ("cpu_decode", "gpu_encode"):
        assert 0 <= types[name]["min_workers"] < types[name]["max_workers"]
    assert config["max_workers"] >= sum(types[n].get("max_workers", 0) for n in ("cpu_decode", "gpu_encode"))


def test_s3_access_by_instance_profile_and_region(config: dict[str, Any]) -> None:
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
    region = config["provider"]["region"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = "\n".join(config[key])
        assert f"AWS_REGION={region}" in start and f"AWS_DEFAULT_REGION={region}" in start
    assert "AWS_SECRET_ACCESS_KEY" not in (ROOT / "cluster.yaml").read_text()


def test_setup_installs_the_synced_project_with_pinned_torch_and_ray(config: dict[str, Any]) -> None:
    import ray

    assert config["file_mounts"] == {"~/vtok": "."}
    assert ".venv" in config["rsync_exclude"] and ".git" in config["rsync_exclude"]
    commands = _commands(config)
    # The same torch as `make` pins, and the Ray that launches and submits (versions must match).
    torch_pin = re.search(r"^TORCH_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert torch_pin and f'"torch=={torch_pin.group(1)}"' in commands
    assert f'"ray[data,default]=={ray.__version__}"' in commands
    assert commands.index("torch==") < commands.index("-e ~/vtok")
