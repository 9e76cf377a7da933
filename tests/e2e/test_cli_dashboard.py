"""`memstream dashboard`: starts the REST server with the dashboard, makes a key when none is
given (or checks the one given) and prints the page's URL and the key."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx

from tests.servers import MEMSTREAM, START_TIMEOUT_S, free_port, log_env, stop_process


def _start(data_dir: Path, *args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    port = free_port()
    proc = subprocess.Popen(
        [*MEMSTREAM, "--data-dir", str(data_dir), "--embedder", "hashing", "dashboard",
         "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=log_env(),
    )  # fmt: skip
    printed: dict[str, str] = {}
    assert proc.stdout is not None
    while len(printed) < 2:
        line = proc.stdout.readline()
        if not line:
            _, stderr = proc.communicate(timeout=30)
            raise AssertionError(f"memstream dashboard exited {proc.returncode}:\n{stderr}")
        name, _, value = line.strip().partition(": ")
        printed[name] = value
    assert printed["dashboard"] == f"http://127.0.0.1:{port}/dashboard"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if httpx.get(printed["dashboard"], timeout=2).status_code == 200:
                return proc, printed
        except httpx.TransportError:
            pass
        assert proc.poll() is None, "the server exited"
        assert time.monotonic() < deadline, "the dashboard never answered"
        time.sleep(0.2)


def _keys(data_dir: Path) -> list[str]:
    listed = subprocess.run(
        [*MEMSTREAM, "--data-dir", str(data_dir), "--json", "keys", "list"],
        capture_output=True, text=True, timeout=120, check=True, env=log_env(),
    )  # fmt: skip
    return [k["key_id"] for k in json.loads(listed.stdout)["results"]]


def test_dashboard_command_makes_a_key_and_prints_the_url(tmp_path: Path) -> None:
    proc, printed = _start(tmp_path, "--log-level", "warning")
    try:
        key = printed["api key"]
        base = printed["dashboard"].removesuffix("/dashboard")
        page = httpx.get(printed["dashboard"], timeout=10)
        assert page.status_code == 200 and "dashboard.js" in page.text
        me = httpx.get(f"{base}/v1/ping/", headers={"Authorization": f"Token {key}"}, timeout=10)
        assert me.status_code == 200
        assert (me.json()["org_id"], me.json()["project_id"]) == ("local", "default")
    finally:
        stop_process(proc)
    assert len(_keys(tmp_path)) == 1

    # with --key: that key, and no new one
    proc, again = _start(tmp_path, "--key", key)
    try:
        assert again["api key"] == key
    finally:
        stop_process(proc)
    assert len(_keys(tmp_path)) == 1


def test_dashboard_command_refuses_an_unknown_key(tmp_path: Path) -> None:
    done = subprocess.run(
        [*MEMSTREAM, "--data-dir", str(tmp_path), "--embedder", "hashing", "dashboard",
         "--port", str(free_port()), "--key", "msk_0123456789abcdef_nope"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=log_env(),
    )  # fmt: skip
    assert done.returncode == 2
    assert "--key: Invalid API key." in done.stderr
