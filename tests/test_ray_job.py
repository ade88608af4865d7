"""`ray job submit` against a `ray start --head` cluster with token authentication."""

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .integration import ROOT, TINY, table, write_sweep

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def token_cluster(tmp_path):
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PATH=f"{bin_dir}:{env['PATH']}")
    dashboard = _free_port()
    start = subprocess.run(
        [bin_dir / "ray", "start", "--head", f"--port={_free_port()}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield env, f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([bin_dir / "ray", "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_ray_job_submit_with_token_auth(tmp_path, token_cluster):
    env, address = token_cluster
    sweep = write_sweep(tmp_path, TINY + "grid: {optimizer: [adam, sgd]}\n", name="job")
    results = tmp_path / "results"
    submit = [Path(sys.executable).parent / "ray", "job", "submit", "--address", address, "--working-dir", ".",
              "--", "python", "orchestrator/run.py", str(sweep), "--results", str(results)]

    no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    refused = subprocess.run(submit, cwd=ROOT, env=no_token, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "auth" in (refused.stdout + refused.stderr).lower(), refused.stdout + refused.stderr
    assert not results.exists()

    out = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "succeeded" in out.stdout
    trials = table(results, "job", "trials")
    assert sorted(trials["optimizer"]) == ["adam", "sgd"] and set(trials["status"]) == {"ok"}
