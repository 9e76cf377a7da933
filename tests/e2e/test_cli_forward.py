"""The CLI asks a running `memstream serve` of its data directory (issue 16, section 7).

A real server subprocess and real CLI processes: forwarded get-all, search and add print
exactly what the command prints by itself (`--no-server`), errors included; the credential
works only over the server's private Unix socket; a server that is gone is not asked; an add
whose answer is lost is reported, never written a second time; files open to other users are
not trusted. Which path answered is told by what the CLI process imported: a forwarded
command imports neither `lance` nor LanceDB.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from memstream.local_server import DISCOVERY, PATH, SERVE_DIR, fingerprint
from memstream.settings import Settings
from tests.e2e.test_cli import clean_env
from tests.e2e.test_cli_fast_paths import RECORDING
from tests.servers import Server, start_server, stop_server


def cli(
    data: Path, *args: str, env: dict[str, str] | None = None, modules: Path | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {**clean_env(), "MEMSTREAM_DATA_DIR": str(data),
                   "MEMSTREAM_EMBEDDER": "hashing", **(env or {})}  # fmt: skip
    if modules is not None:
        environment["MODULES_OUT"] = str(modules)
        cmd = [sys.executable, "-c", RECORDING, *args]
    else:
        cmd = [sys.executable, "-m", "memstream.cli", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=environment,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def answered_by_server(
    data: Path, tmp: Path, *args: str, env: dict[str, str] | None = None
) -> bool:
    out = tmp / "modules.json"
    done = cli(data, *args, env=env, modules=out)
    assert done.returncode == 0, done.stderr
    return not {"lance", "lancedb"} & set(json.loads(out.read_text()))  # it opened nothing


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that only need one running (a server start is 5-10 s):
    they write under distinct user ids (alice, bob, carol; "a" is only read, and must stay
    empty), and the one that loosens the server's files restores them before it ends."""
    srv = start_server(tmp_path_factory.mktemp("served") / "data", embedder="hashing")
    try:
        yield srv
    finally:
        stop_server(srv)


def test_forwarded_commands_print_what_the_command_prints_by_itself(
    served: Server, tmp_path: Path
) -> None:
    data = served.data_dir
    for args in (
        ("add", "alice likes green tea", "--user-id", "alice", "--metadata", '{"k": 1}'),
        ("add", "alice flies on tuesday", "--user-id", "alice", "--agent-id", "travel",
         "--categories", "travel"),
        ("add", "bob likes coffee", "--user-id", "bob"),
    ):  # fmt: skip
        done = cli(data, "--json", *args)
        assert done.returncode == 0, done.stderr
        [result] = json.loads(done.stdout)["results"]
        assert result["event"] == "ADD" and result["memory"] == args[1]
    assert answered_by_server(data, tmp_path, "add", "carol too", "--user-id", "carol")
    reads = [
        ("--json", "get-all", "--user-id", "alice", "--agent-id", "*"),
        ("get-all", "--user-id", "alice", "--agent-id", "*", "--page", "2", "--page-size", "1"),
        ("--json", "search", "tea", "--user-id", "alice", "--agent-id", "*"),
        ("search", "coffee", "--filters", '{"OR": [{"user_id": "bob"}, {"user_id": "carol"}]}'),
        ("--json", "get-all", "--page", "0", "--user-id", "alice"),  # refused: exit 2
        ("search", "x", "--filters", '{"user_id": {"bogus": 1}}'),  # refused: exit 2
    ]
    for args in reads:
        by_server = cli(data, *args)
        by_itself = cli(data, "--no-server", *args)
        assert (by_server.returncode, by_server.stdout, by_server.stderr) == (
            by_itself.returncode, by_itself.stdout, by_itself.stderr,
        ), args  # fmt: skip
    assert cli(data, "get-all", "--page", "0", "--user-id", "alice").returncode == 2
    assert answered_by_server(data, tmp_path, "--json", "search", "tea", "--user-id", "alice")
    assert not answered_by_server(data, tmp_path, "--no-server", "get-all", "--user-id", "alice")
    # other settings than the server's: the command answers by itself
    other = {"MEMSTREAM_MAX_QUERY_CHARS": "50"}
    assert not answered_by_server(data, tmp_path, "get-all", "--user-id", "bob", env=other)

    # the forwarded add is recorded as the command's own: actor "cli", no API key
    listed = json.loads(cli(data, "--json", "get-all", "--user-id", "carol").stdout)
    history = json.loads(cli(data, "--json", "history", listed["results"][0]["id"]).stdout)
    assert history["results"][0]["actor"] == {"key_id": None, "source": "cli"}


def test_the_local_credential_works_only_over_the_private_socket(served: Server) -> None:
    folder = served.data_dir / SERVE_DIR
    entry = json.loads((folder / DISCOVERY).read_text())
    assert (folder / DISCOVERY).stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700
    sock = folder / entry["socket"]
    assert sock.stat().st_mode & 0o777 == 0o600
    body = {"op": "get_all", "org_id": "local", "project_id": "default",
            "args": {"filters": {"user_id": "a"}, "page": 1, "page_size": 10,
                     "show_expired": False, "as_of": None}}  # fmt: skip
    good = {"Authorization": f"Local {entry['token']}"}
    over_tcp = httpx.post(served.base_url + PATH, json=body, headers=good, timeout=30)
    assert over_tcp.status_code == 401  # the token is no key over TCP
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=30) as local:
        assert local.post("http://local" + PATH, json=body).status_code == 401
        wrong = {"Authorization": "Local " + "x" * len(entry["token"])}
        assert local.post("http://local" + PATH, json=body, headers=wrong).status_code == 401
        ok = local.post("http://local" + PATH, json=body, headers=good)
        assert ok.status_code == 200 and ok.json()["result"]["count"] == 0
    assert PATH not in httpx.get(served.base_url + "/openapi.json", timeout=30).text


def test_files_open_to_others_are_not_trusted(served: Server, tmp_path: Path) -> None:
    data = served.data_dir
    discovery = data / SERVE_DIR / DISCOVERY
    assert answered_by_server(data, tmp_path, "get-all", "--user-id", "a")
    discovery.chmod(0o640)
    try:
        assert not answered_by_server(data, tmp_path, "get-all", "--user-id", "a")
    finally:
        discovery.chmod(0o600)
    (data / SERVE_DIR).chmod(0o770)
    try:
        assert not answered_by_server(data, tmp_path, "get-all", "--user-id", "a")
    finally:
        (data / SERVE_DIR).chmod(0o700)
    assert answered_by_server(data, tmp_path, "get-all", "--user-id", "a")


def test_a_server_that_stopped_or_died_is_not_asked(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", embedder="hashing")
    folder = srv.data_dir / SERVE_DIR
    assert (folder / DISCOVERY).exists()
    stop_server(srv)  # SIGTERM: it takes its files away
    assert not list(folder.iterdir())

    srv = start_server(tmp_path / "data", embedder="hashing")
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(timeout=30)
    assert (folder / DISCOVERY).exists()  # left behind
    done = cli(srv.data_dir, "--json", "add", "after the crash", "--user-id", "dana")
    assert done.returncode == 0, done.stderr  # written here, once
    assert not (folder / DISCOVERY).exists()  # and the leftover removed
    found = json.loads(cli(srv.data_dir, "--json", "get-all", "--user-id", "dana").stdout)
    assert [m["memory"] for m in found["results"]] == ["after the crash"]


@contextlib.contextmanager
def silent_server(data: Path) -> Iterator[list[bytes]]:
    """A 'server' on the local socket that reads each request and hangs up without an
    answer (a server killed mid-request); yields the requests it received."""
    settings = Settings(data_dir=data, embedder="hashing")
    folder = data / SERVE_DIR
    folder.mkdir(mode=0o700)
    path = folder / f"cli-{os.getpid()}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    path.chmod(0o600)
    listener.listen(8)
    listener.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                received.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    entry = {"pid": os.getpid(), "socket": path.name, "token": "t" * 43,
             "fingerprint": fingerprint(settings)}  # fmt: skip
    fd = os.open(folder / DISCOVERY, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(entry, f)
    try:
        yield received
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


def test_an_add_whose_answer_is_lost_is_reported_and_not_written_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert cli(data, "add", "the first one", "--user-id", "erin").returncode == 0
    with silent_server(data) as received:
        done = cli(data, "add", "the lost one", "--user-id", "erin")
        assert done.returncode == 1
        assert "may or may not have been written" in done.stderr, done.stderr
        assert len(received) == 1 and b"the lost one" in received[0]
        # a read that gets no answer is answered by the command itself
        read = cli(data, "--json", "get-all", "--user-id", "erin")
        assert read.returncode == 0, read.stderr
        assert len(received) == 2
    texts = [m["memory"] for m in json.loads(read.stdout)["results"]]
    assert texts == ["the first one"]  # the command did not write the lost add itself
