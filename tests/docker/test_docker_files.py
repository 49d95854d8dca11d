"""Docker cannot run on the project's machines: the Dockerfiles and the compose file are checked by parsing."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "docker" / name).read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.mark.parametrize("name", ["gateway.Dockerfile", "worker.Dockerfile"])
def test_dockerfile_copies_only_what_exists_and_ends_in_a_bdscreen_command(name):
    steps = instructions(name)
    assert steps[0][0] == "FROM"
    assert {op for op, _ in steps} <= {"FROM", "ENV", "WORKDIR", "RUN", "COPY", "USER", "EXPOSE", "HEALTHCHECK", "CMD"}
    for op, args in steps:
        if op == "COPY":
            assert (ROOT / args.split()[0]).exists(), args
    command = json.loads(steps[-1][1])
    assert steps[-1][0] == "CMD" and command[0] == "bdscreen" and command[1] in ("serve", "worker")


def test_worker_image_runs_on_the_cuda_runtime_with_onnxruntime_gpu():
    steps = instructions("worker.Dockerfile")
    assert re.fullmatch(r"nvidia/cuda:12\.\S+-runtime-\S+", steps[0][1])
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert '".[gpu]"' in runs and "torch==2.13.0" in runs
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^gpu = \["onnxruntime-gpu', pyproject, re.M)


#: Imported only because they happen to be installed here: setuptools' site hook (_distutils_hack), and rich
#: and pygments, which httpx tries for its optional command line.
OPTIONAL = {"setuptools", "rich", "pygments"}


def requirement_closure(specs: list[str]) -> set[str]:
    """Distributions that ``pip install SPECS`` brings in (with the extras named), as installed here."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [Requirement(spec) for spec in specs]
    while todo:
        requirement = todo.pop()
        name = requirement.name.lower().replace("_", "-")
        extras = requirement.extras or {""}
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            dependency = Requirement(line)
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in extras):
                todo.append(dependency)
    return {key.split("[")[0] for key in seen}


def test_gateway_image_installs_every_package_the_gateway_imports_and_no_torch(tmp_path):
    runs = " ".join(args for op, args in instructions("gateway.Dockerfile") if op == "RUN")
    specs = [spec.strip('"') for spec in runs.split() if spec.startswith('"')]
    code = ("import json, sys; import service.main; from importlib.metadata import packages_distributions as p; "
            "d = p(); print(json.dumps(sorted({x for m in list(sys.modules) for x in d.get(m.split('.')[0], [])})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"BDSCREEN_STORAGE": str(tmp_path), "PATH": "/usr/bin:/bin"})
    imported = {name.lower().replace("_", "-") for name in json.loads(out.stdout)} - {"bdscreen"} - OPTIONAL
    installed = requirement_closure(specs)
    assert "torch" not in installed and "torch" not in imported
    assert imported <= installed, f"the gateway imports {sorted(imported - installed)}, which its image lacks"


def test_compose_has_persistent_redis_gateway_scalable_gpu_workers_and_one_shared_volume(compose):
    services = compose["services"]
    assert {"redis", "gateway", "worker", "cpu-worker"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # so that --scale worker=N works
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert worker["command"][:4] == ["bdscreen", "worker", "--queues", "gpu"]
    assert services["cpu-worker"]["command"][-1] == "cpu"
    for name in ("gateway", "worker", "cpu-worker"):
        env = services[name]["environment"]
        assert services[name]["volumes"] == [f"scans:{env['BDSCREEN_STORAGE']}"]
        assert env["BDSCREEN_BROKER"] == "redis://redis:6379/0" and env["BDSCREEN_AUTH"] == "keys"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert re.fullmatch(r"postgresql://\w+:\w+@postgres:5432/\w+", env["BDSCREEN_DATABASE_URL"])
    assert services["postgres"]["volumes"][0].startswith("pg-data:")
    assert {"scans", "redis-data", "pg-data"} <= set(compose["volumes"])
    for service in services.values():
        if "build" in service:
            assert (ROOT / service["build"]["dockerfile"]).is_file()
