"""`ray job submit` against a `ray start --head` cluster with token authentication."""

import os
import secrets
import subprocess

import pytest

from .integration import RAY, ROOT, TINY, free_port, start_ray_node, table, write_sweep

pytestmark = pytest.mark.integration


@pytest.fixture
def token_cluster(tmp_path):
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PATH=f"{RAY.parent}:{env['PATH']}")
    dashboard = free_port()
    head = start_ray_node(
        ["--head", f"--port={free_port()}", "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}"],
        env, tmp_path / "head.log",
    )
    try:
        yield env, f"http://127.0.0.1:{dashboard}"
    finally:
        head.stop()


def test_ray_job_submit_with_token_auth(tmp_path, token_cluster):
    env, address = token_cluster
    sweep = write_sweep(tmp_path, TINY + "grid: {optimizer: [adam, sgd]}\n", name="job")
    results = tmp_path / "results"
    submit = [RAY, "job", "submit", "--address", address, "--working-dir", ".",
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
