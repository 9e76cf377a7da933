"""Point-in-time reads, audits, counts, exports and the SQL console, on the file log and Kafka."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from memstream.errors import NotFoundError, ValidationError
from memstream.events import now_ms
from memstream.models import Tenant, iso_ms
from memstream.query import analytics
from memstream.query.export import EXPORT_COLUMNS, export_memories
from memstream.service import Memstream
from memstream.settings import Settings

T = TypeVar("T")
OTHER = Tenant("local", "other-project")


def go(settings: Settings, body: Callable[[Memstream], Awaitable[T]]) -> T:
    async def main() -> T:
        async with Memstream(settings) as ms:
            return await body(ms)

    return asyncio.run(main())


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat()


async def tick() -> int:
    """A fresh millisecond: events written after this call occur strictly later."""
    await asyncio.sleep(0.005)
    t = now_ms()
    await asyncio.sleep(0.005)
    return t


def texts(page: Any) -> list[str]:
    return sorted(m.memory for m in page.results)


# --------------------------------------------------------------------------------------
# as_of
# --------------------------------------------------------------------------------------


def test_as_of_by_time_and_by_position(settings: Settings) -> None:
    async def body(ms: Memstream) -> None:
        [tea] = await ms.add("likes green tea", user_id="alice", metadata={"v": 1},
                             categories=["food"])  # fmt: skip
        [oslo] = await ms.add("lives in Oslo", user_id="alice")
        t1 = await tick()
        await ms.update(tea.id, text="likes black coffee")
        await ms.update(tea.id, metadata={"v": 2})  # metadata only: text carries forward
        t2 = await tick()
        await ms.delete(oslo.id)
        [bergen] = await ms.add("lives in Bergen", user_id="alice")
        await ms.add("bob's own fact", user_id="bob")
        t3 = await tick()
        assert await ms.delete_all({"user_id": "alice"}) == 2
        t4 = await tick()

        alice = {"user_id": "alice"}
        assert texts(await ms.get_all(alice, as_of=iso(t1))) == ["likes green tea", "lives in Oslo"]
        at2 = await ms.get_all(alice, as_of=iso(t2))
        assert texts(at2) == ["likes black coffee", "lives in Oslo"]
        [coffee] = [m for m in at2.results if m.id == tea.id]
        assert coffee.metadata == {"v": 2} and coffee.categories == ["food"]
        assert coffee.updated_at > coffee.created_at and coffee.created_at < t1
        assert texts(await ms.get_all(alice, as_of=iso(t3))) == [
            "likes black coffee",
            "lives in Bergen",
        ]
        assert texts(await ms.get_all(alice, as_of=iso(t4))) == []
        assert (await ms.get_all(alice)).count == 0
        # naive = UTC; a datetime object works too
        naive = dt.datetime.fromtimestamp(t1 / 1000, tz=dt.UTC).replace(tzinfo=None)
        assert texts(await ms.get_all(alice, as_of=naive.isoformat())) == texts(
            await ms.get_all(alice, as_of=naive)
        )
        # metadata filters run over the past state
        old_meta = {"AND": [alice, {"metadata": {"v": 1}}]}
        assert texts(await ms.get_all(old_meta, as_of=iso(t1))) == ["likes green tea"]
        assert texts(await ms.get_all(old_meta, as_of=iso(t2))) == []

        # get(id) as of then; 404 before it existed and after it was deleted
        assert (await ms.get(tea.id, as_of=iso(t1))).memory == "likes green tea"
        with pytest.raises(NotFoundError):
            await ms.get(bergen.id, as_of=iso(t2))
        with pytest.raises(NotFoundError):
            await ms.get(tea.id, as_of=iso(t4))

        # search ranks the texts of then
        [hit, *_] = await ms.search("green tea", alice, as_of=iso(t1), threshold=None)
        assert hit.id == tea.id and hit.memory == "likes green tea" and hit.score is not None
        assert await ms.search("green tea", alice, as_of=iso(t4)) == []

        # by position: the state right after the event at that position was applied
        history = await ms.history(tea.id)
        positions = [h.position for h in history]
        assert [h.event for h in history][:3] == ["ADD", "UPDATE", "UPDATE"]
        p, o = positions[1]
        cut = {"partition": p, "offset": o}
        at_first_update = await ms.get(tea.id, as_of=cut)
        assert (at_first_update.memory, at_first_update.metadata) == (
            "likes black coffee",
            {"v": 1},
        )
        assert (await ms.get(tea.id, as_of=f"{p}:{positions[0][1]}")).memory == "likes green tea"
        if p == 0:
            assert (await ms.get(tea.id, as_of=positions[0][1])).memory == "likes green tea"
        with pytest.raises(ValidationError, match="past the end of the log"):
            await ms.get_all(alice, as_of={"partition": p, "offset": 10**9})
        for bad in ("yesterday", True, {"offset": -1}, {"partition": 0}, "0:1,0:2", 1.5):
            with pytest.raises(ValidationError):
                await ms.get_all(alice, as_of=bad)

    go(settings, body)


def test_as_of_position_on_another_partition_cuts_by_time(settings: Settings) -> None:
    """On Kafka a position names one partition; the others are cut at that event's time."""

    async def body(ms: Memstream) -> None:
        users = [f"user-{i}" for i in range(12)]
        first: dict[str, tuple[str, tuple[int, int]]] = {}
        for u in users:
            [r] = await ms.add(f"first fact of {u}", user_id=u)
            first[u] = (r.id, (await ms.history(r.id))[0].position)
        partitions = {pos[0] for _, pos in first.values()}
        assert len(partitions) == (1 if settings.kafka_bootstrap is None else settings.partitions)
        a = users[0]
        b = next((u for u in users if first[u][1][0] != first[a][1][0]), users[1])
        await tick()
        [late_b] = await ms.add(f"second fact of {b}", user_id=b)  # after a's event
        mark = await tick()
        [late_a] = await ms.add(f"second fact of {a}", user_id=a)
        p, o = (await ms.history(late_a.id))[0].position
        got = await ms.get_all({"user_id": [a, b]}, as_of=f"{p}:{o}", page_size=100)
        assert {m.id for m in got.results} == {first[a][0], first[b][0], late_b.id, late_a.id}
        p0, o0 = first[a][1]
        early = await ms.get_all({"user_id": [a, b]}, as_of={"partition": p0, "offset": o0})
        if len(partitions) > 1:  # b's events after a's first event are not in the cut
            assert first[a][0] in {m.id for m in early.results}
            assert late_b.id not in {m.id for m in early.results}
        # a time cut between the two late writes
        at_mark = await ms.get_all({"user_id": [a, b]}, as_of=iso(mark))
        assert late_b.id in {m.id for m in at_mark.results}
        assert late_a.id not in {m.id for m in at_mark.results}

    go(settings, body)


# --------------------------------------------------------------------------------------
# exports
# --------------------------------------------------------------------------------------


async def populate(ms: Memstream) -> dict[str, Any]:
    out: dict[str, Any] = {}
    [r] = await ms.add("Prefers aisle seats, \"always\"", user_id="alice",
                       metadata={"source": "chat", "n": 3}, categories=["travel", "seats"])  # fmt: skip
    out["aisle"] = r.id
    [r] = await ms.add("Allergic to peanuts\nand shellfish", user_id="alice",
                       expiration_date="2099-01-01")  # fmt: skip
    out["allergy"] = r.id
    [r] = await ms.add("Ticket: lost luggage", user_id="alice", run_id="t-1", immutable=True)
    out["ticket"] = r.id
    [r] = await ms.add("Bob likes jazz", user_id="bob", metadata={"genre": "jazz"})
    out["bob"] = r.id
    out["t_added"] = await tick()
    await ms.update(out["aisle"], text="Prefers window seats")
    await ms.delete(out["bob"])
    return out


def normalise(row: dict[str, Any]) -> dict[str, Any]:
    """An export row as plain values: JSON text decoded, the types a reader inferred (uuid,
    timestamp, date) back to the exported strings, empty CSV cells as None."""
    out = {}
    for key in EXPORT_COLUMNS:
        value = row.get(key)
        if key in ("metadata", "categories") and isinstance(value, str):
            value = json.loads(value)
        elif key == "immutable" and isinstance(value, str):
            value = value == "true"
        elif isinstance(value, uuid.UUID):
            value = str(value)
        elif isinstance(value, dt.datetime):
            moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
            value = iso_ms(round(moment.timestamp() * 1000))
        elif isinstance(value, dt.date):
            value = value.isoformat()
        elif value == "":
            value = None
        out[key] = value
    return out


def test_exports_have_the_rows_of_get_all(settings: Settings, tmp_path: Path) -> None:
    async def body(ms: Memstream) -> None:
        ids = await populate(ms)
        everything = {"user_id": "*", "run_id": ["*", None]}
        page = await ms.get_all(everything, page_size=1000)
        want = sorted(
            ({k: m.to_api().get(k) for k in EXPORT_COLUMNS} for m in page.results),
            key=lambda r: r["id"],
        )
        assert len(want) == 3

        for fmt in ("json", "jsonl", "csv", "parquet"):
            path = tmp_path / f"export.{fmt}"
            count, chosen = await export_memories(ms, path, None, everything)
            assert (count, chosen) == (3, fmt)
            reader = {"json": "read_json", "jsonl": "read_json", "csv": "read_csv",
                      "parquet": "read_parquet"}[fmt]  # fmt: skip
            con = duckdb.connect()
            cursor = con.execute(f"SELECT * FROM {reader}(?)", [str(path)])
            columns = [d[0] for d in cursor.description or []]
            assert columns == list(EXPORT_COLUMNS), fmt
            rows = [dict(zip(columns, r, strict=True)) for r in cursor.fetchall()]
            con.close()
            rows.sort(key=lambda r: str(r["id"]))
            if fmt in ("json", "jsonl"):
                # DuckDB reads the metadata objects as one STRUCT with every key of every row,
                # so compare those with the file's own JSON
                text = path.read_text()
                raw = (
                    json.loads(text)
                    if fmt == "json"
                    else [json.loads(x) for x in text.splitlines()]
                )
                for row, doc in zip(rows, sorted(raw, key=lambda r: r["id"]), strict=True):
                    row["metadata"] = doc["metadata"]
            if fmt == "csv":  # DuckDB types the cells; compare the text itself
                with open(path, newline="") as f:
                    rows = sorted(csv.DictReader(f), key=lambda r: r["id"])
            got = [normalise(r) for r in rows]
            assert got == want, fmt

        # pyarrow opens them as well
        assert pq.read_table(tmp_path / "export.parquet").num_rows == 3
        assert pacsv.read_csv(tmp_path / "export.csv").num_rows == 3
        assert pajson.read_json(tmp_path / "export.jsonl").num_rows == 3
        assert len(json.loads((tmp_path / "export.json").read_text())) == 3

        # as_of: the export of then, with the old text and the since-deleted memory
        path = tmp_path / "then.parquet"
        count, _ = await export_memories(
            ms, path, "parquet", {"user_id": ["alice", "bob"]}, as_of=iso(ids["t_added"])
        )
        then = pq.read_table(path).to_pylist()
        assert count == 3 and {r["memory"] for r in then} == {
            "Prefers aisle seats, \"always\"", "Allergic to peanuts\nand shellfish", "Bob likes jazz",
        }  # fmt: skip
        with pytest.raises(ValidationError):
            await export_memories(ms, tmp_path / "x.xlsx", None, everything)

    go(settings, body)


# --------------------------------------------------------------------------------------
# audit, stats, churn
# --------------------------------------------------------------------------------------


def test_audit_window_stats_and_churn(settings: Settings) -> None:
    async def body(ms: Memstream) -> None:
        t0 = await tick()
        ids = await populate(ms)
        t1 = await tick()
        assert await ms.delete_all({"user_id": "alice", "run_id": "t-1"}) == 1
        t2 = await tick()
        await ms.add("someone else's", user_id="alice", tenant=OTHER)
        await ms.catch_up()
        gen = ms.projector.generation()

        window = analytics.audit(gen, ms.tenant, None, start=iso(t0), end=iso(t1))
        assert [e["event"] for e in window] == ["ADD", "ADD", "ADD", "ADD", "UPDATE", "DELETE"]
        update = window[4]
        assert update["memory_id"] == ids["aisle"]
        assert (update["old_memory"], update["new_memory"]) == (
            "Prefers aisle seats, \"always\"", "Prefers window seats",
        )  # fmt: skip
        delete = window[5]
        assert (delete["memory_id"], delete["reason"]) == (ids["bob"], "api")
        assert delete["old_memory"] == "Bob likes jazz"
        assert all(e["created_at"] >= iso_ms(t0) for e in window)

        # filters: alice's memories without run (implicit null scoping), then her run
        alice = analytics.audit(gen, ms.tenant, {"user_id": "alice"}, start=iso(t0))
        assert {e["memory_id"] for e in alice} == {ids["aisle"], ids["allergy"]}
        run = analytics.audit(gen, ms.tenant, {"user_id": "alice", "run_id": "t-1"}, start=iso(t0))
        assert [(e["event_type"], e["reason"]) for e in run] == [
            ("MemoryAdded", None), ("DeleteAllRequested", None), ("MemoryDeleted", "delete_all"),
        ]  # fmt: skip
        assert run[1]["details"]["count"] == 1
        # after t2 only the other project wrote: nothing here
        assert analytics.audit(gen, ms.tenant, None, start=iso(t2)) == []
        assert len(analytics.audit(gen, OTHER, None, start=iso(t2))) == 1
        with pytest.raises(ValidationError):
            analytics.audit(gen, ms.tenant, None, start=iso(t2), end=iso(t0))

        policies = ms.reader.policies(ms.tenant)
        now = now_ms()
        live = analytics.live_memories(gen, ms.tenant, None, policies=policies, now_ms=now)
        assert analytics.stats(live, None)["total"] == 2
        by_user = analytics.stats(live, "user")
        assert by_user["results"] == [{"key": "alice", "count": 2}]
        by_cat = analytics.stats(live, "category")
        assert sorted(by_cat["results"], key=lambda r: str(r["key"])) == [
            {"key": None, "count": 1}, {"key": "seats", "count": 1}, {"key": "travel", "count": 1},
        ]  # fmt: skip
        today = dt.datetime.fromtimestamp(now / 1000, tz=dt.UTC).date().isoformat()
        assert analytics.stats(live, "day")["results"] == [{"key": today, "count": 2}]
        then = analytics.live_memories(
            gen, ms.tenant, {"user_id": "*", "run_id": ["*", None]}, policies=policies,
            now_ms=now, as_of=iso(t1),
        )  # fmt: skip
        assert analytics.stats(then, "run")["results"] == [
            {"key": None, "count": 2}, {"key": "t-1", "count": 1},
        ]  # fmt: skip
        with pytest.raises(ValidationError):
            analytics.stats(live, "colour")

        days = analytics.churn(gen, ms.tenant, None, days=3, now_ms=now)
        assert [d["day"] for d in days][-1] == today and len(days) == 3
        assert days[-1] | {"day": None} == {
            "day": None,
            "added": 4,
            "deleted": 2,
            "expired": 0,
            "net": 2,
        }
        assert all(d["added"] == d["deleted"] == 0 for d in days[:-1])
        only_bob = analytics.churn(gen, ms.tenant, {"user_id": "bob"}, days=1, now_ms=now)
        assert only_bob[0]["added"] == 1 and only_bob[0]["deleted"] == 1

    go(settings, body)


# --------------------------------------------------------------------------------------
# the SQL console
# --------------------------------------------------------------------------------------


def test_sql_console_reads_and_refuses(settings: Settings, tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("a,b\n1,2\n")

    async def body(ms: Memstream) -> None:
        await populate(ms)
        await ms.add("someone else's", user_id="alice", tenant=OTHER)
        await ms.catch_up()
        gen = ms.projector.generation()

        result = analytics.run_sql(
            gen, ms.tenant,
            "SELECT user_id, count(*) AS n, max(metadata->>'$.source') AS src "
            "FROM memories GROUP BY user_id ORDER BY user_id",
        )  # fmt: skip
        assert result.columns == ["user_id", "n", "src"]
        assert result.rows == [("alice", 3, "chat")]
        counted = analytics.run_sql(
            gen, ms.tenant,
            "WITH e AS (SELECT outcome FROM events) SELECT outcome, count(*) FROM e "
            "GROUP BY ALL ORDER BY ALL",
        )  # fmt: skip
        assert counted.rows == [("ADD", 4), ("DELETE", 1), ("UPDATE", 1)]
        assert analytics.run_sql(gen, None, "SELECT count(*) FROM memories").rows == [(4,)]
        api = analytics.run_sql(gen, ms.tenant, "SELECT created_at FROM memories LIMIT 1").to_api()
        assert api["rows"][0][0].endswith("Z")

        refused = {
            "INSERT INTO memories SELECT * FROM memories": "INSERT",
            f"COPY memories TO '{tmp_path / 'out.csv'}'": "COPY",
            f"ATTACH '{tmp_path / 'x.db'}' AS x": "ATTACH",
            f"SELECT * FROM read_csv('{secret}')": "out of reach",
            f"SELECT * FROM '{secret}'": "out of reach",
            "SELECT 1; SELECT 2": "exactly one",
            "INSTALL httpfs": "LOAD statements are not allowed",
            "SET enable_external_access = true": "SET",
            "PRAGMA version": "PRAGMA",
            "DROP TABLE memories": "DROP",
            "SELEC 1": "syntax error",
            "": "give one SELECT query",
        }
        for query, words in refused.items():
            with pytest.raises(ValidationError, match=words):
                analytics.run_sql(gen, ms.tenant, query)
        assert not (tmp_path / "out.csv").exists() and not (tmp_path / "x.db").exists()

    go(settings, body)


# --------------------------------------------------------------------------------------
# the CLI
# --------------------------------------------------------------------------------------


NO_RUN_KAFKA: dict[str, str | None] = {"KAFKA_BOOTSTRAP_SERVERS": None, "MEMSTREAM_TOPIC": None}


def test_cli_as_of_audit_export_and_sql(settings: Settings, tmp_path: Path) -> None:
    from memstream.cli import app

    base = ["--data-dir", str(settings.data_dir), "--embedder", settings.embedder]
    if settings.kafka_bootstrap:
        base += ["--kafka", settings.kafka_bootstrap, "--topic", settings.topic]
    runner = CliRunner()

    def cli(*args: str, ok: bool = True) -> Any:
        # the file log when the settings name no broker, whatever the run exported
        result = runner.invoke(app, [*base, "--json", *args], env=NO_RUN_KAFKA)
        assert (result.exit_code == 0) == ok, result.output
        return json.loads(result.stdout.strip().splitlines()[-1])

    [added] = cli("add", "likes tea", "--user-id", "alice")["results"]
    time.sleep(0.005)
    t1 = now_ms()
    time.sleep(0.005)
    cli("update", added["id"], "--text", "likes coffee")

    then = cli("get-all", "--filters", '{"user_id": "alice"}', "--as-of", iso(t1))
    assert [m["memory"] for m in then["results"]] == ["likes tea"]
    assert cli("get", added["id"], "--as-of", iso(t1))["memory"] == "likes tea"
    found = cli("search", "tea", "--user-id", "alice", "--as-of", iso(t1))["results"]
    assert found[0]["memory"] == "likes tea"
    assert (
        "past the end"
        in cli("get-all", "--user-id", "alice", "--as-of", "0:999999", ok=False)["detail"]
    )

    window = cli("audit", "--user-id", "alice", "--from", iso(t1))
    assert [e["event"] for e in window["results"]] == ["UPDATE"]
    assert window["results"][0]["actor"]["source"] == "cli"

    out = tmp_path / "alice.csv"
    assert cli("export", "--user-id", "alice", "-o", str(out), "--as-of", iso(t1))["count"] == 1
    assert [r["memory"] for r in csv.DictReader(out.open())] == ["likes tea"]

    assert cli("stats", "--by", "user")["results"] == [{"key": "alice", "count": 1}]
    assert cli("churn", "--days", "1")["results"][0]["added"] == 1
    assert cli("sql", "SELECT text FROM memories")["rows"] == [["likes coffee"]]
    assert "refused" in cli("sql", "COPY memories TO 'x.csv'", ok=False)["detail"]


# --------------------------------------------------------------------------------------
# REST
# --------------------------------------------------------------------------------------


def test_rest_reads_take_as_of(settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from memstream.keys import KeyRegistry
    from memstream.server.app import create_app

    async def make_key() -> str:
        async with KeyRegistry.from_settings(settings) as registry:
            _, token = await registry.create("local", "default")
            return token

    token = asyncio.run(make_key())
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Token {token}"

        def call(method: str, path: str, status: int = 200, **kw: Any) -> Any:
            r = client.request(method, path, **kw)
            assert r.status_code == status, r.text
            return r.json()

        [added] = call("POST", "/v3/memories/add/", json={"messages": "likes tea",
                                                          "user_id": "alice"})["results"]  # fmt: skip
        time.sleep(0.005)
        t1 = iso(now_ms())
        time.sleep(0.005)
        call("PUT", f"/v1/memories/{added['id']}/", json={"text": "likes coffee"})

        listed = call("POST", "/v3/memories/", json={"filters": {"user_id": "alice"}, "as_of": t1})
        assert [m["memory"] for m in listed["results"]] == ["likes tea"]
        now = call("POST", "/v3/memories/", json={"filters": {"user_id": "alice"}})
        assert [m["memory"] for m in now["results"]] == ["likes coffee"]
        found = call("POST", "/v3/memories/search/",
                     json={"query": "tea", "filters": {"user_id": "alice"}, "as_of": t1})  # fmt: skip
        assert [m["memory"] for m in found["results"]] == ["likes tea"]
        assert (
            call("GET", f"/v1/memories/{added['id']}/", params={"as_of": t1})["memory"]
            == "likes tea"
        )
        p, o = call("GET", f"/v1/memories/{added['id']}/history/")[0]["position"].values()
        by_position = {"partition": p, "offset": o}
        one = call("POST", "/v3/memories/", json={"user_id": "alice", "as_of": by_position})
        assert [m["memory"] for m in one["results"]] == ["likes tea"]
        bad = call("POST", "/v3/memories/", 400, json={"user_id": "alice", "as_of": "soon"})
        assert "as_of" in bad["detail"]
