"""`memstream` processes for the tests: a `memstream serve` on a free loopback port
(`start_server` / `stop_server`, `Server` with its CLI options), and the environment a
`memstream` subprocess gets (`log_env`). Shared by tests/e2e (whose conftest builds its
session servers on them) and tests/integration; a module of its own because pytest does not
mean conftest files to be imported by tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

os.environ.setdefault("MEM0_TELEMETRY", "False")  # the mem0 client must not phone home

START_TIMEOUT_S = 90.0
MEMSTREAM = [sys.executable, "-m", "memstream.cli"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running `memstream serve` and the CLI options that reach the same log and keys."""

    base_url: str
    data_dir: Path
    global_args: list[str]
    backend: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    keys: dict[str, str] = field(default_factory=dict)  # label -> key

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*MEMSTREAM, *self.global_args, *args],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            env=log_env(),
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"memstream {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def create_key(self, org_id: str, project_id: str, name: str | None = None) -> str:
        return self.create_keys([(org_id, project_id, name)])[0]

    def create_keys(self, specs: list[tuple[str, str, str | None]]) -> list[str]:
        """`memstream keys create` for each (org, project, name), run in parallel."""
        procs = []
        for org_id, project_id, name in specs:
            args = ["keys", "create", "--org-id", org_id, "--project-id", project_id]
            args += ["--name", name] if name else []
            procs.append(subprocess.Popen(
                [*MEMSTREAM, *self.global_args, *args], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=log_env(),
            ))  # fmt: skip
        keys = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"keys create exited {proc.returncode}:\n{out}\n{err}"
            keys.append([ln for ln in out.splitlines() if ln.strip()][-1].strip())
        return keys

    def new_key(self, prefix: str = "proj") -> tuple[str, str, str]:
        """A key for a brand-new project: (key, org_id, project_id)."""
        org, project = "org_e2e", f"{prefix}_{uuid.uuid4().hex[:8]}"
        return self.create_key(org, project), org, project

    def log_tail(self, lines: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def log_env() -> dict[str, str]:
    """The environment for a `memstream` process whose log the arguments name: without
    KAFKA_BOOTSTRAP_SERVERS / MEMSTREAM_TOPIC, which a run's Kafka tests may set (they would
    turn a file-log server into a Kafka one; a Kafka server gets `--kafka` and `--topic`)."""
    hidden = ("KAFKA_BOOTSTRAP_SERVERS", "MEMSTREAM_TOPIC")
    return {k: v for k, v in os.environ.items() if k not in hidden}


def start_server(
    data_dir: Path,
    *,
    kafka: tuple[str, str] | None = None,
    embedder: str = "hashing",
    keys: dict[str, tuple[str, str, str | None]] | None = None,
    env: dict[str, str] | None = None,
    log_level: str = "warning",
) -> Server:
    """Start `memstream serve`; `keys` (label -> org, project, name) are created meanwhile."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    global_args = ["--data-dir", str(data_dir), "--embedder", embedder]
    if kafka is not None:
        global_args += ["--kafka", kafka[0], "--topic", kafka[1]]
    server = Server(f"http://127.0.0.1:{port}", data_dir, global_args, "kafka" if kafka else "file")
    server.log_path = data_dir / "server.log"
    with open(server.log_path, "wb") as log:
        server.proc = subprocess.Popen(
            [*MEMSTREAM, *global_args, "serve", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", log_level],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**log_env(), **(env or {})},
        )  # fmt: skip
    if keys:
        server.keys.update(zip(keys, server.create_keys(list(keys.values())), strict=True))
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if server.proc.poll() is not None:
            raise AssertionError(
                f"memstream serve exited {server.proc.returncode}:\n{server.log_tail()}"
            )
        try:
            if httpx.get(f"{server.base_url}/v1/ping/", timeout=2).status_code == 401:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_server(server)
            raise AssertionError(
                f"memstream serve did not answer in {START_TIMEOUT_S}s:\n{server.log_tail()}"
            )
        time.sleep(0.2)


def stop_server(server: Server) -> None:
    if server.proc is not None:
        stop_process(server.proc)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 30 s: a `memstream` process that ignores the first."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
