"""Subject keys on Kafka are stored wrapped under a master key that never enters Kafka
(issue 13), through the whole stack: a real broker, `Memstream`, and the CLI's rotation."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from memstream.errors import KeyStoreError
from memstream.keystore.base import Subject
from memstream.keystore.master import MasterKeys, new_master_key_text
from memstream.service import Memstream
from memstream.settings import Settings
from tests.integration.test_keystore_contract import _raw_records

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

TEXT = "alice keeps her spare key under the blue flowerpot"


def test_keys_topic_holds_no_key_material_and_a_wrong_master_key_fails_at_start(
    kafka_bootstrap: str, kafka_topic: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "d", kafka_bootstrap=kafka_bootstrap,
                        topic=kafka_topic, embedder="hashing")  # fmt: skip
    subject = Subject("local", "default", "user_id", "alice")

    async def write() -> bytes:
        async with Memstream(settings) as ms:
            await ms.add(TEXT, user_id="alice")
            return (await ms.subject_keys.key_for(subject)).secret

    secret = asyncio.run(write())
    key_file = settings.data_dir / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # generated for the embedded default

    records = asyncio.run(_raw_records(kafka_bootstrap, f"{kafka_topic}.subject-keys"))
    values = [v for _, v in records if v is not None]
    assert values, "no key record was written"
    for value in values:
        for needle in (secret, base64.b64encode(secret), b"alice"):
            assert needle not in value
        assert MasterKeys.wrapped_with(value) is not None

    wrong = dataclasses.replace(settings, master_key=new_master_key_text())

    async def start_with_wrong_key() -> None:
        ms = Memstream(wrong)
        try:
            await ms.start()
        finally:
            await ms.close()

    with pytest.raises(KeyStoreError, match="wrapped under master key"):
        asyncio.run(start_with_wrong_key())

    # rotation through the CLI: new key current, the generated one previous
    new = new_master_key_text()
    env = {**os.environ, "MEMSTREAM_MASTER_KEY": new,
           "MEMSTREAM_MASTER_KEY_PREVIOUS": key_file.read_text().strip()}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "memstream.cli", "--data-dir", str(settings.data_dir),
         "--kafka", kafka_bootstrap, "--topic", kafka_topic, "keys", "rotate-master"],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "rewrapped 1 subject key" in proc.stdout, proc.stdout

    async def read_with_new_key_only() -> list[str]:
        async with Memstream(dataclasses.replace(settings, master_key=new)) as ms:
            await ms.replay()  # every sealed event opened again, with the rewrapped key
            page = await ms.get_all({"user_id": "alice"})
            return [m.memory for m in page.results]

    assert asyncio.run(read_with_new_key_only()) == [TEXT]
