"""An environment variable with a value memstream cannot use is a clear error of the CLI
(exit 2, one JSON document naming the variable under --json), not a Python traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memstream.cli import app


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("MEMSTREAM_MAX_TEXT_CHARS", "abc", "MEMSTREAM_MAX_TEXT_CHARS='abc' is not a number"),
        ("MEMSTREAM_LANCE_FORMAT", "3.0", "MEMSTREAM_LANCE_FORMAT: '3.0' is not a Lance file"),
    ],
)
def test_a_bad_environment_variable_is_named_not_a_traceback(
    tmp_path: Path, variable: str, value: str, named: str
) -> None:
    result = CliRunner().invoke(
        app,
        ["--data-dir", str(tmp_path / "d"), "--embedder", "hashing", "--json", "status"],
        env={variable: value, "KAFKA_BOOTSTRAP_SERVERS": ""},
    )
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    detail = json.loads(result.stdout.splitlines()[0])["detail"]
    assert named in detail
