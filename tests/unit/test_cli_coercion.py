"""memstream.cli.common's shortcut past typer's pydantic coercion gives typer's own values.

The same small typer app (options of the kinds memstream's commands have) is run with the
shortcut and with typer's own coercion restored, over values the shortcut answers itself
(unset, a str, an int default, a flag's environment words) and values it leaves to typer
(numbers from the command line, bad words, bounded ints): same values, same errors.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import typer
from typer.core import _TyperParameter
from typer.testing import CliRunner

import memstream.cli.common  # noqa: F401 -- installs the shortcut

app = typer.Typer()


@app.command()
def show(
    text: str = typer.Option(None, "--text"),
    page: int = typer.Option(1, "--page"),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    threshold: float = typer.Option(None, "--threshold"),
    ratio: float = typer.Option(0.5, "--ratio"),
    flag: bool = typer.Option(False, "--flag", envvar="TEST_SHORTCUT_FLAG"),
    name: str = typer.Option("x", "--name", envvar="TEST_SHORTCUT_NAME"),
) -> None:
    print(json.dumps([text, page, port, threshold, ratio, flag, name]))


CASES: list[tuple[list[str], dict[str, str]]] = [
    ([], {}),
    (["--text", "hello", "--page", "3", "--threshold", "0.25"], {}),
    (["--page", "x"], {}),
    (["--port", "70000"], {}),
    (["--port", "80"], {}),
    (["--ratio", "1e-3", "--flag"], {}),
    ([], {"TEST_SHORTCUT_FLAG": "1", "TEST_SHORTCUT_NAME": "from env"}),
    ([], {"TEST_SHORTCUT_FLAG": " Yes "}),
    ([], {"TEST_SHORTCUT_FLAG": "off"}),
    ([], {"TEST_SHORTCUT_FLAG": "maybe"}),
]


def run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    done = CliRunner().invoke(app, args, env=env)
    return done.exit_code, done.output


@pytest.mark.parametrize(("args", "env"), CASES)
def test_the_shortcut_gives_typers_own_values_and_errors(
    args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shortcut: Any = _TyperParameter.get_runtime_param
    assert getattr(shortcut, "_memstream_lazy", False)
    fast = run(args, env)
    monkeypatch.setattr(_TyperParameter, "get_runtime_param", shortcut._memstream_typer)
    assert run(args, env) == fast
