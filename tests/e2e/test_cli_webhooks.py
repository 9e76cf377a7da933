"""`memstream webhooks run`, the standalone dispatcher, as a real process on the file log:
it delivers what the CLI writes, stops on SIGTERM with its position committed, and a new
run sends only what was written while it was down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from memstream.webhooks import verify
from tests.e2e.conftest import MEMSTREAM
from tests.webhook_receiver import receiving


def test_the_standalone_dispatcher_delivers_and_resumes_where_it_stopped(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data"), "--embedder", "hashing"]
    env = {**os.environ, "MEMSTREAM_WEBHOOK_BACKOFF_S": "0.05"}

    def cli(*args: str) -> str:
        proc = subprocess.run([*MEMSTREAM, *data, *args], capture_output=True, text=True,
                              timeout=120, env=env, stdin=subprocess.DEVNULL)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def add(text: str) -> str:
        return str(json.loads(cli("--json", "add", text, "--user-id", "zoe"))["results"][0]["id"])

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([*MEMSTREAM, *data, "webhooks", "run"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)  # fmt: skip

    def stop(proc: subprocess.Popen[bytes]) -> str:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr.decode()
        return stderr.decode()

    with receiving(fail_first=2) as receiver:
        secret = cli("webhooks", "create", "--url", receiver.url, "--name", "cli",
                     "--event-types", "memory_add").strip().splitlines()[-1]  # fmt: skip
        first = [add(f"zoe fact {i}") for i in range(3)]
        proc = start()
        try:
            receiver.wait_for(lambda got: len(got) >= 3)
        finally:
            assert "positions committed" in stop(proc)
        later = [add(f"zoe later {i}") for i in range(2)]
        proc = start()
        try:
            receiver.wait_for(lambda got: len(got) >= 5)
        finally:
            stop(proc)
        got = receiver.accepted()
        assert [r.json["memory_id"] for r in got] == first + later  # none twice, none lost
        assert all(verify(secret, r.body, r.headers["x-memstream-signature"]) for r in got)
        [hook] = json.loads(cli("--json", "webhooks", "list"))
        records = json.loads(cli("--json", "webhooks", "deliveries", hook["webhook_id"]))
        assert [d["memory_id"] for d in records] == list(reversed(first + later))
        assert [d["attempts"] for d in records][-1] == 3  # the first event took 3 tries
