"""What every command of the `memstream` CLI shares: the app, its global options, helpers.

The command modules import this one and register on its `app`; nothing here imports them,
so the CLI has no import circle. With --json every command prints exactly one JSON document on stdout, shaped like the Mem0
REST response; errors then print `{"detail": ...}` and exit non-zero. Without it, tables.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from memstream.errors import MemstreamError, ValidationError
from memstream.models import MemoryView, WriteResult, iso_ms
from memstream.settings import Settings

if TYPE_CHECKING:  # the ledger stack (LanceDB alone takes ~3 s to import) loads on first use,
    from memstream.light_reads import LightReads  # so --help and bad input answer at once
    from memstream.service import Memstream


def _lazy_typer_coercion() -> None:
    """Keep typer from building a pydantic TypeAdapter for parameters whose value it would
    pass through unchanged.

    typer 0.2x coerces every parameter of a command through a TypeAdapter built on first
    use, and asks for it before looking at the value: also for each option left unset
    (None), and for a string given for a `str` option or a default already of its type.
    With pydantic's import that was ~40% of a `memstream get-all` (issue 16, section 7).
    Here such values get exactly what typer's coercion returns for them (None, or () for a
    multi-value parameter; the value itself for a str into `str`, an int into an
    unconstrained `int`, a float into an unconstrained `float`; a flag's environment word,
    e.g. MEMSTREAM_NO_SERVER=1, as pydantic reads it), and every other value, parser, file
    or constraint goes through typer's own coercion as before. Nothing is changed if
    typer's internals are not the ones this knows."""
    try:
        from typer.core import _TyperParameter
    except ImportError:
        return
    found = getattr(_TyperParameter, "get_runtime_param", None)
    if found is None or getattr(found, "_memstream_lazy", False):
        return
    build: Callable[[Any], Any] = found

    def simple(param: Any) -> Any:
        """The annotation when typer would coerce with no parser, file or click type."""
        try:
            desc = param.type_descriptor
            info = desc.parameter_info
            if desc.file_annotation is not None or info.parser is not None:
                return None
            if getattr(info, "click_type", None) is not None:
                return None
            if desc.annotation in (int, float) and (info.min, info.max) != (None, None):
                return None
            return desc.annotation
        except AttributeError:  # another typer: let it coerce
            return None

    def unchanged(param: Any, value: Any) -> bool:
        annotation = simple(param)
        return annotation in (str, int, float) and type(value) is annotation

    def env_bool(param: Any, value: Any) -> bool | None:
        """A flag's environment value as typer reads it ('' is False, then pydantic's
        words), None for anything else (typer then says what is wrong with it)."""
        if simple(param) is not bool or type(value) is not str:
            return None
        word = value.strip().lower()
        if word in ("", "0", "off", "f", "false", "n", "no"):
            return False
        return True if word in ("1", "on", "t", "true", "y", "yes") else None

    class Lazy:
        def __init__(self, param: Any) -> None:
            self.param = param

        def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
            if value is None:
                return () if (param.multiple or param.nargs == -1) else None
            if unchanged(param, value):
                return value
            if (flag := env_bool(param, value)) is not None:
                return flag
            return build(self.param).coerce(value, param=param, ctx=ctx)

    def get_runtime_param(self: Any) -> Any:
        return Lazy(self)

    get_runtime_param._memstream_lazy = True  # type: ignore[attr-defined]
    get_runtime_param._memstream_typer = build  # type: ignore[attr-defined]  # for the tests
    _TyperParameter.get_runtime_param = get_runtime_param  # type: ignore[method-assign]


_lazy_typer_coercion()

app = typer.Typer(
    help="memstream: an event-sourced memory ledger for AI agents (Mem0-compatible).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)
T = TypeVar("T")


class State:
    settings: Settings
    json: bool = False
    no_server: bool = False


state = State()


@app.callback()
def main_options(
    data_dir: str = typer.Option(  # a str: typer's Path coercion costs a pydantic import
        None,
        "--data-dir",
        envvar="MEMSTREAM_DATA_DIR",
        metavar="<path>",
        help="Where the log and projections live.",
        show_default="./memstream-data",
    ),
    kafka: str = typer.Option(
        None,
        "--kafka",
        envvar="KAFKA_BOOTSTRAP_SERVERS",
        help="Kafka bootstrap servers; absent -> the embedded file log.",
    ),
    topic: str = typer.Option(
        None, "--topic", envvar="MEMSTREAM_TOPIC", show_default="memstream.events"
    ),
    embedder: str = typer.Option(
        None,
        "--embedder",
        envvar="MEMSTREAM_EMBEDDER",
        show_default="the projection's own, else minilm",
        help="minilm | hashing | openai:<model> | sentence-transformers",
    ),
    org_id: str = typer.Option(None, "--org-id", envvar="MEMSTREAM_ORG_ID", show_default="local"),
    project_id: str = typer.Option(
        None, "--project-id", envvar="MEMSTREAM_PROJECT_ID", show_default="default"
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON document (Mem0 REST shape)."
    ),
    no_server: bool = typer.Option(
        False,
        "--no-server",
        envvar="MEMSTREAM_NO_SERVER",
        help="Answer here even when a `memstream serve` of this data dir runs (by default "
        "get-all, search and add are sent to it: it has everything open already).",
    ),
    llm_base_url: str = typer.Option(
        None,
        "--llm-base-url",
        help="OpenAI-compatible endpoint for inference, e.g. https://api.openai.com/v1 or "
        "http://127.0.0.1:11434/v1 (env MEMSTREAM_LLM_BASE_URL); absent -> inference off",
    ),
    llm_model: str = typer.Option(
        None, "--llm-model", help="the chat model, e.g. gpt-4o-mini (env MEMSTREAM_LLM_MODEL)"
    ),
    llm_api_key: str = typer.Option(
        None, "--llm-api-key", help="sent as Bearer token (env MEMSTREAM_LLM_API_KEY)"
    ),
) -> None:
    state.json = as_json  # before anything can fail: its error is a JSON document too
    try:
        state.settings = Settings.from_env(
            data_dir=Path(data_dir) if data_dir is not None else None, kafka_bootstrap=kafka, topic=topic, embedder=embedder,
            org_id=org_id, project_id=project_id, llm_base_url=llm_base_url, llm_model=llm_model,
            llm_api_key=llm_api_key,
        )  # fmt: skip
    except ValueError as exc:  # an environment variable that is not what it must be
        fail(str(exc), code=2)
    state.no_server = no_server


# -- plumbing ----------------------------------------------------------------------------
def run(
    body: Callable[[Memstream], Awaitable[T]],
    *,
    settings: Settings | None = None,
    for_replay: bool = False,
) -> T:
    from memstream.service import Memstream

    async def go() -> T:
        ms = Memstream(settings or state.settings)
        await ms.start(for_replay=for_replay)
        try:
            return await body(ms)
        finally:
            await ms.close()

    try:
        return asyncio.run(go())
    except MemstreamError as exc:
        fail(exc.message, code=2 if isinstance(exc, ValidationError) else 1)
    except KeyboardInterrupt:
        fail("interrupted", code=130)


LIGHT_READS_ENV = "MEMSTREAM_LIGHT_READS"
LIGHT_ADD_ENV = "MEMSTREAM_LIGHT_ADD"


def _switched_off(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() in ("0", "false", "no", "off")


def run_light(body: Callable[[LightReads], T]) -> T | None:
    """Answer a read from the current projection through `lance` alone (memstream/
    light_reads.py), or None when only the full path (`run`) can answer it exactly. None too
    when anything about the data directory surprises it: the full path then reports that.
    MEMSTREAM_LIGHT_READS=0 always takes the full path (to compare the two)."""
    if _switched_off(LIGHT_READS_ENV):
        return None
    from memstream.light_reads import PlanDeclined, open_light_reads

    try:
        reads = asyncio.run(open_light_reads(state.settings))
    except (MemstreamError, OSError, ValueError, KeyError):
        return None
    if reads is None:
        return None
    try:
        return body(reads)
    except PlanDeclined:
        return None
    except MemstreamError as exc:
        fail(exc.message, code=2 if isinstance(exc, ValidationError) else 1)


def run_light_add(messages: Any, **kwargs: Any) -> list[WriteResult] | None:
    """An add (no inference) written and applied through `lance` alone (memstream/
    light_writes.py), or None when it did not start (nothing appended: `run` the full
    path). Events it appended but could not apply are finished by the full path, never
    appended twice. MEMSTREAM_LIGHT_ADD=0 always takes the full path."""
    if _switched_off(LIGHT_ADD_ENV):
        return None
    from memstream.light_writes import AddHandedOff, light_add

    try:
        return asyncio.run(light_add(state.settings, messages, **kwargs))
    except AddHandedOff as handed:
        positions = handed.positions
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    return run(lambda ms: ms.add_results(positions))


def fail(message: str, code: int = 2) -> NoReturn:
    if state.json:
        print(json.dumps({"detail": message}))
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def parse_json(option: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{option}: not valid JSON ({exc.msg} at position {exc.pos})")


def emit(document: Any, human: Callable[[], None]) -> None:
    if state.json:
        print(json.dumps(document, ensure_ascii=False))
    else:
        human()


def entity_filters(filters: str | None, ids: dict[str, str | None]) -> dict[str, Any]:
    """--filters JSON, or the --user-id/... options as a simple entity filter."""
    parsed = parse_json("--filters", filters)
    given = {k: v for k, v in ids.items() if v is not None}
    if parsed is not None and given:
        fail("give either --filters or --user-id/--agent-id/--app-id/--run-id, not both")
    if parsed is not None:
        if not isinstance(parsed, dict):
            fail("--filters: must be a JSON object")
        return dict(parsed)
    return given


def memory_table(memories: list[MemoryView], title: str) -> None:
    table = Table(title=title, show_lines=False)
    for col in ("id", "memory", "user", "agent", "app", "run", "created"):
        table.add_column(col, overflow="fold")
    if memories and memories[0].score is not None:
        table.add_column("score")
    for m in memories:
        row = [m.id[:8], m.memory, m.user_id or "", m.agent_id or "", m.app_id or "", m.run_id or "",
               iso_ms(m.created_at) or ""]  # fmt: skip
        if m.score is not None:
            row.append(f"{m.score:.3f}")
        table.add_row(*row)
    out.print(table)


def write_table(results: list[WriteResult]) -> None:
    for r in results:
        out.print(f"{r.event:<6} {r.id}  {r.memory or ''}", highlight=False)


UserId = typer.Option(None, "--user-id")
AgentId = typer.Option(None, "--agent-id")
AppId = typer.Option(None, "--app-id")
RunId = typer.Option(None, "--run-id")
Filters = typer.Option(None, "--filters", help='JSON, e.g. \'{"user_id": "alice", "run_id": "*"}\'')
AsOfOption = typer.Option(
    None, "--as-of", help="read the log as it was: ISO-8601 time, or log position 0:1234"
)
CandidateOption = typer.Option(
    None,
    "--candidate",
    help="read a reinfer proposal's candidate generation instead of the live memories "
    "(`memstream reinfer list`)",
)
