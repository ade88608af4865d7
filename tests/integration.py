"""Helpers for tests that run the real CLI (a real local Ray in a subprocess)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, timeout: float = 300, script: str = "orchestrator/run.py") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_cli(*args: str, script: str = "orchestrator/run.py") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, script, *map(str, args)], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def write_sweep(folder: Path, text: str, name: str = "tiny") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def table(results: Path, sweep: str, name: str) -> pl.DataFrame:
    return pl.scan_parquet(f"{results}/{sweep}/{name}/*.parquet").collect()


TINY = """\
dataset: {name: synthetic, n_train: 256, n_test: 64}
model: {width: 0.125}
train: {epochs: 2, lr_steps: [1], batch_size: 64, optimizer: adam, reg: l2, strength: 1.0e-3}
device: cpu
resources: {cpu: 1}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayNode:
    """A `ray start --block` node of a test and its own temporary folder."""

    process: subprocess.Popen
    temp_dir: Path

    def stop(self, keep_logs: Path | None = None) -> None:
        """End the node's processes (by its own pid) and delete its folder, its logs copied to
        `keep_logs` first if given."""
        self.process.terminate()
        self.process.wait(timeout=120)
        if keep_logs is not None:
            shutil.copytree(self.temp_dir / "session_latest" / "logs", keep_logs, dirs_exist_ok=True)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_ray_node(args: list[str], env: dict[str, str], log: Path) -> RayNode:
    """`ray start --block ARGS`, once it is up. Its processes end when this one is terminated, so a
    test stops its own nodes, not every Ray on the machine as `ray stop` would. It keeps its files
    in a folder of its own, as on a machine of its own: the address file other tests' `ray.init()`
    would read stays out of /tmp/ray, and each node unpacks a job's working dir into its own (a
    shared one is unpacked again over a running driver). Its processes listen on free ports."""
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: socket paths must fit 107 bytes
    ports = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")
    with log.open("w") as out:
        process = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", f"--temp-dir={temp_dir}",
                                    "--object-store-memory=100000000", *(f"--{name}={free_port()}" for name in ports),
                                    *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    node = RayNode(process, temp_dir)
    deadline = time.monotonic() + 180
    while "block forever" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            node.stop()
            raise AssertionError(log.read_text())
        time.sleep(0.5)
    return node
