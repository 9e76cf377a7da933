"""`memstream webhooks run`, the standalone dispatcher, as a real process on the file log:
it delivers what another process writes, stops on SIGTERM with its position committed, and a new
run sends only what was written while it was down."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

from memstream.service import Memstream
from memstream.settings import Settings
from memstream.webhooks import verify
from tests.servers import MEMSTREAM, log_env
from tests.webhook_receiver import receiving


def test_the_standalone_dispatcher_delivers_and_resumes_where_it_stopped(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data"), "--embedder", "hashing"]
    env = {**log_env(), "MEMSTREAM_WEBHOOK_BACKOFF_S": "0.05"}  # the file log, not a run's Kafka

    def cli(*args: str) -> str:
        proc = subprocess.run([*MEMSTREAM, *data, *args], capture_output=True, text=True,
                              timeout=120, env=env, stdin=subprocess.DEVNULL)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def add(*texts: str) -> list[str]:
        """Written in this process: the file log takes appends from any process at once."""

        async def go() -> list[str]:
            settings = Settings(data_dir=tmp_path / "data", embedder="hashing")
            async with Memstream(settings) as ms:
                return [(await ms.add(t, user_id="zoe"))[0].id for t in texts]

        return asyncio.run(go())

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
        first = add(*(f"zoe fact {i}" for i in range(3)))
        proc = start()
        try:
            receiver.wait_for(lambda got: len(got) >= 3)
        finally:
            assert "positions committed" in stop(proc)
        later = add("zoe later 0", "zoe later 1")
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
