"""Stages 5 and 6: Memstream.search at scale against the same predicate straight on
LanceDB, sequential adds, and point-in-time reads.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import TENANT, TOP_K, Run, p50, p95, rate, ratio, say, settings_for
from workload import Workload

from memstream.embedders.base import Embedder
from memstream.service import Memstream


# -- 5. search at scale, raw baseline, sequential adds ---------------------------------------
def raw_encoder(run: Run, embedder: Embedder) -> Callable[[str], Any]:
    """One raw model encode: a bare onnxruntime session for minilm, the function itself for
    hashing (it has no model)."""
    if embedder.name.startswith("minilm"):
        from embed_throughput import raw_onnxruntime  # the baseline bench/embed_throughput uses

        enc = raw_onnxruntime(getattr(embedder, "intra_op_num_threads", os.cpu_count() or 1), 64)
        return lambda text: enc([text])[0]
    return embedder.embed_one


# two scores this close are a tie: memstream ranks by a float32 dot product, Lance by its
# cosine distance, and the two round differently in the last digits (0.321541 vs 0.321542)
TIE = 1e-5


def search_filters(user: str, other: str) -> dict[str, dict[str, Any]]:
    return {
        "scoped": {"user_id": user},
        "wildcard": {"user_id": user, "agent_id": "*"},
        "list": {"user_id": {"in": [user, other]}},
    }


class _Recorder:
    """Wraps a LanceDB table (and the query builders it returns) to record the predicate of
    the vector search the reader runs: the raw baseline then sends exactly that predicate,
    whatever clauses (tenancy, null scoping, retention) the reader builds."""

    def __init__(self, target: Any, seen: list[str], vector: bool = False) -> None:
        self._target, self._seen, self._vector = target, seen, vector

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            vector = self._vector or (name == "search" and bool(args) and args[0] is not None)
            if name == "where" and vector:
                self._seen.append(args[0])
            out = attr(*args, **kwargs)
            if hasattr(out, "where") and hasattr(out, "limit"):  # a query builder
                return _Recorder(out, self._seen, vector)
            return out

        return call


async def captured_predicate(ms: Memstream, query: str, filters: dict[str, Any]) -> str:
    """The whole predicate the reader's plan before the scoped one sends to LanceDB."""
    from memstream.query.reader import MemoryReader

    gen = ms.projector.generation()
    table = gen.memories()
    seen: list[str] = []
    gen._memories = _Recorder(table, seen)
    try:
        MemoryReader(ms.projector, scoped=False).search(TENANT, query, filters, top_k=TOP_K)
    finally:
        gen._memories = table
    if not seen:
        raise RuntimeError("could not capture the predicate of memstream's vector search")
    return seen[-1]


_INDEXED = re.compile(
    r"\b(id|org_id|project_id|user_id|agent_id|app_id|run_id)\b(?= (=|<>|IN|NOT IN|IS) )"
)


def lead_first(pred: str, lead: str) -> str:
    """Raw LanceDB's best plan for the same answer (bench/search_plans.py): the lead (the
    filter's most selective indexed equality) answered by its index, the whole predicate
    checked on those rows with every id column written `(col || '')` -- equal values, NULL
    stays NULL, but no index answers it. (The workload's ids never contain ' = '.)"""
    return f"{lead} AND ({_INDEXED.sub(lambda m: f'({m.group(1)} || {chr(39) * 2})', pred)})"


NOLEAD_QUERIES = 10  # a flat scan of a 1M table takes ~0.7-2.5 s a query


async def nolead_search(
    run: Run,
    ms: Memstream,
    queries: list[tuple[str, str]],
    warm: int,
    timed_memstream: Callable[..., Awaitable[tuple[float, Any]]],
    timed_raw: Callable[[str, str], tuple[float, Any]],
) -> None:
    """A search no indexed column leads (`{"user_id": "*"}`: every user of the project):
    memstream (through the vector index when the corpus has one, projector/vector_index.py)
    against raw LanceDB's exact flat search of the same predicate, in turns; the recall of
    memstream's answer against the flat one."""
    from memstream.projector.vector_index import has_vector_index

    filters = {"user_id": "*"}
    t: dict[str, list[float]] = {"ms": [], "flat": []}
    hits = total = short = 0
    for i, (query, _) in enumerate(queries):
        pred = await captured_predicate(ms, query, filters)
        took: dict[str, Any] = {}
        for which in ("ms", "flat") if i % 2 == 0 else ("flat", "ms"):
            if which == "ms":
                took[which] = await timed_memstream(query, filters, True)
            else:
                took[which] = timed_raw(query, pred)
        ids, want = [m.id for m in took["ms"][1]], took["flat"][1]["id"].to_pylist()
        hits += len(set(ids) & set(want))
        total += len(want)
        short += len(ids) < len(want)
        if i >= warm:
            for k in t:
                t[k].append(took[k][0] * 1000)
    indexed = has_vector_index(ms.projector.generation().memories())
    run.result["search_nolead_p50_ms"] = p50(t["ms"])
    run.result["search_nolead_flat_p50_ms"] = p50(t["flat"])
    run.result["search_nolead_vs_flat"] = ratio(p50(t["ms"]), p50(t["flat"]))
    run.result["search_nolead_recall"] = round(hits / total, 4) if total else None
    run.details["search_nolead"] = {
        "filters": json.dumps(filters),
        "queries": len(t["ms"]),
        "vector_index": indexed,
        "p95_ms": p95(t["ms"]),
        "flat_p95_ms": p95(t["flat"]),
        "answers_shorter_than_flat": short,
        "flat_is": "raw LanceDB, the predicate memstream sent, bypass_vector_index(), "
        "prefilter, top 10 (exact), plus one encode of the query",
    }
    say(
        f"search no lead {filters}: memstream p50 {p50(t['ms'])} ms "
        f"({'vector index' if indexed else 'no vector index'}), raw flat p50 "
        f"{p50(t['flat'])} ms, recall {run.result['search_nolead_recall']}"
    )


async def stage_search(run: Run, wl: Workload, data_dir: Path) -> None:
    import lancedb

    from memstream.query.filters import compile_filters
    from memstream.query.reader import MEMORY_COLUMNS, MemoryReader
    from memstream.query.scoped import lead_predicate

    a = run.args
    ms = Memstream(settings_for(data_dir, a.embedder, None))
    await ms.start()
    try:
        gen = ms.projector.generation()
        raw_table = lancedb.connect(gen.path / "lance").open_table("memories")
        encode = raw_encoder(run, ms.embedder)
        warm = 3
        queries = wl.queries[: a.queries + warm]
        timings: dict[str, dict[str, list[float]]] = {}

        async def timed_memstream(query: str, filters: Any, consistent: bool) -> tuple[float, Any]:
            t = time.perf_counter()
            out = await ms.search(query, filters, tenant=TENANT, top_k=TOP_K, consistent=consistent)
            return time.perf_counter() - t, out

        unscoped = MemoryReader(ms.projector, scoped=False)

        def timed_unscoped(query: str, filters: Any) -> tuple[float, Any]:
            t = time.perf_counter()
            out = unscoped.search(TENANT, query, filters, top_k=TOP_K)
            return time.perf_counter() - t, out

        def timed_raw(query: str, pred: str) -> tuple[float, Any]:
            t = time.perf_counter()
            vec = encode(query)
            out = (
                raw_table.search(vec)
                .metric("cosine")
                .bypass_vector_index()  # exact: a large corpus has an IVF_PQ index
                .where(pred, prefilter=True)
                .select([*MEMORY_COLUMNS, "_distance"])
                .limit(TOP_K)
                .to_arrow()
            )
            return time.perf_counter() - t, out

        mismatches = 0
        recall_hits = recall_total = short = ties_at_boundary = 0
        plans = ("ms", "nc", "raw", "best", "old")
        for variant in ("scoped", "wildcard", "list"):
            t: dict[str, list[float]] = {k: [] for k in plans}
            for i, (query, user) in enumerate(queries):
                other = queries[(i + 1) % len(queries)][1]
                filters = search_filters(user, other)[variant]
                # the raw baselines: the whole predicate memstream's plan before sent
                # (captured, outside the clock), and the same led by the selective index
                pred = await captured_predicate(ms, query, filters)
                lead = lead_predicate(compile_filters(filters, org_id=TENANT.org_id,
                                                      project_id=TENANT.project_id).ast)  # fmt: skip
                best_pred = lead_first(pred, lead) if lead else pred

                # the plans take turns going first: whoever runs a query first pays the
                # colder caches, so a fixed order would favour the ones that follow
                shift = i % len(plans)
                took: dict[str, Any] = {}
                for which in plans[shift:] + plans[:shift]:
                    if which == "raw":
                        took[which] = timed_raw(query, pred)
                    elif which == "best":
                        took[which] = timed_raw(query, best_pred)
                    elif which == "old":
                        took[which] = await asyncio.to_thread(timed_unscoped, query, filters)
                    else:
                        took[which] = await timed_memstream(query, filters, which == "ms")
                found, exact = took["ms"][1], took["raw"][1]
                ids, want = [m.id for m in found], exact["id"].to_pylist()
                if ids != want:
                    mismatches += 1
                # rows whose score ties the exact answer's last one are equally right:
                # memstream breaks ties by id, Lance in no stated order (a tie at the
                # boundary was the only difference in the 1M run's mismatches)
                last = 1.0 - exact["_distance"][-1].as_py() if want else 0.0
                tied = {m.id for m in found if m.id not in want and m.score >= last - TIE}
                ties_at_boundary += bool(tied)
                recall_hits += min(len(want), len(set(ids) & set(want)) + len(tied))
                recall_total += len(want)
                short += len(ids) < len(want)
                if i >= warm:
                    for k in plans:
                        t[k].append(took[k][0] * 1000)
            timings[variant] = t
            say(
                f"search {variant}: memstream p50 {p50(t['ms'])} ms, raw best plan p50 "
                f"{p50(t['best'])} ms, raw whole predicate p50 {p50(t['raw'])} ms, "
                f"memstream's plan before p50 {p50(t['old'])} ms ({len(t['ms'])} queries)"
            )
        every = {k: [x for v in timings.values() for x in v[k]] for k in plans}
        # raw LanceDB's best plan per variant: the faster (p50) of the two raw plans
        best_raw = [
            x
            for v in timings.values()
            for x in (v["best"] if (p50(v["best"]) or 0) <= (p50(v["raw"]) or 0) else v["raw"])
        ]
        run.result["search_p50_ms"] = p50(every["ms"])
        run.result["search_p95_ms"] = p95(every["ms"])
        run.result["search_raw_p50_ms"] = p50(every["raw"])
        run.result["search_best_raw_p50_ms"] = p50(best_raw)
        run.result["search_vs_best_raw"] = ratio(p50(every["ms"]), p50(best_raw))
        run.result["search_overhead_ratio"] = ratio(p50(every["ms"]), p50(every["raw"]))
        run.result["search_recall"] = round(recall_hits / recall_total, 4) if recall_total else None
        run.result["search_plan_speedup"] = ratio(p50(every["old"]), p50(every["ms"]))
        run.details["search"] = {
            "queries_per_variant": len(queries) - warm,
            "top_k": TOP_K,
            "rows": raw_table.count_rows(),
            "variants": {
                name: {
                    "filters": json.dumps(search_filters("X", "Y")[name]),
                    "p50_ms": p50(v["ms"]),
                    "p95_ms": p95(v["ms"]),
                    "consistent_false_p50_ms": p50(v["nc"]),
                    "plan_before_p50_ms": p50(v["old"]),
                    "raw_p50_ms": p50(v["raw"]),
                    "raw_p95_ms": p95(v["raw"]),
                    "raw_lead_first_p50_ms": p50(v["best"]),
                    "overhead_ratio": ratio(p50(v["ms"]), p50(v["raw"])),
                    "vs_best_raw": ratio(
                        p50(v["ms"]), min(p50(v["best"]) or 0, p50(v["raw"]) or 0) or None
                    ),
                }
                for name, v in timings.items()
            },
            "consistent_false_p50_ms": p50(every["nc"]),
            "plan_before_p50_ms": p50(every["old"]),
            "result_mismatches_vs_raw": mismatches,
            "answers_shorter_than_exact": short,
            "answers_differing_only_by_tied_rows": ties_at_boundary,
            "raw_is": "LanceDB table.search(vec).metric('cosine').where(P, prefilter=True)"
            ".select(same columns).limit(10).to_arrow() on a plain connection, plus one encode "
            "of the query by the bare model; P is the whole predicate (search_raw_p50_ms) or "
            "the same led by the filter's most selective indexed equality with the other id "
            "columns index-free (lead_first); search_best_raw_p50_ms is the faster of the two "
            "per filter variant",
            "recall_is": "share of the exact top-10 (raw, whole predicate: a flat prefiltered "
            "search is exact; a row whose score ties the exact answer's last score counts as "
            "a hit, since the order among equal scores is arbitrary) that memstream returned",
            "plan_before_is": "MemoryReader(scoped=False): memstream's whole predicate in "
            "LanceDB, as before issue 16 (search_plan_speedup = its p50 / search_p50_ms)",
        }

        await nolead_search(run, ms, queries[: min(len(queries), NOLEAD_QUERIES + warm)], warm,
                            timed_memstream, timed_raw)  # fmt: skip

        # get_all of one user's memories: the scoped plan against the plan before, in turns
        ga: dict[str, list[float]] = {"ms": [], "old": []}
        for i, (_, user) in enumerate(queries):
            order = ("ms", "old") if i % 2 == 0 else ("old", "ms")
            for which in order:
                reader = ms.reader if which == "ms" else unscoped
                t0 = time.perf_counter()
                page = await asyncio.to_thread(reader.get_all, TENANT, {"user_id": user})
                if i >= warm:
                    ga[which].append((time.perf_counter() - t0) * 1000)
        run.result["getall_p50_ms"] = p50(ga["ms"])
        run.result["getall_plan_speedup"] = ratio(p50(ga["old"]), p50(ga["ms"]))
        run.details["get_all"] = {
            "calls": len(ga["ms"]),
            "p50_ms": p50(ga["ms"]),
            "p95_ms": p95(ga["ms"]),
            "plan_before_p50_ms": p50(ga["old"]),
            "last_count": page.count,
            "what": "MemoryReader.get_all({'user_id': X}) (first page of 100) with the scoped "
            "plan and with MemoryReader(scoped=False), alternating",
        }
        say(f"get_all: p50 {p50(ga['ms'])} ms, the plan before {p50(ga['old'])} ms")

        # sequential adds at scale: one writer, wait=True (read-your-writes), inline projector
        extra = wl.memories[a.scale : a.scale + a.seq_adds]
        lat: list[float] = []
        for m in extra:
            t = time.perf_counter()
            await ms.add(m.text, tenant=TENANT, **m.entities())
            lat.append((time.perf_counter() - t) * 1000)
        run.result["seq_add_ps"] = rate(len(lat), sum(lat) / 1000)
        run.details["seq_add"] = {
            "adds": len(lat),
            "p50_ms": p50(lat),
            "p95_ms": p95(lat),
            "what": "one writer, Memstream.add(text, wait=True) on the corpus (file log, "
            "inline projector): append + fsync, project, read the outcome",
        }
        say(f"sequential add: {run.result['seq_add_ps']} memories/s, p50 {p50(lat)} ms")

        # the same with add(wait=False): each add returns once durable in the log (fsynced),
        # the projection follows; the clock stops when the last one is searchable
        extra = wl.memories[a.scale + a.seq_adds + a.rest_adds :][: a.seq_adds]
        lat = []
        start = time.perf_counter()
        for m in extra:
            t = time.perf_counter()
            await ms.add(m.text, tenant=TENANT, **m.entities(), wait=False)
            lat.append((time.perf_counter() - t) * 1000)
        await ms.catch_up()
        total = time.perf_counter() - start
        last = extra[-1]
        found = await ms.search(last.text, last.entities(), tenant=TENANT, top_k=1)
        if not found or found[0].memory != last.text:
            raise RuntimeError("sequential durable adds: the last one is not searchable")
        run.result["seq_add_durable_ps"] = rate(len(lat), total)
        run.details["seq_add_durable"] = {
            "adds": len(lat),
            "p50_ms": p50(lat),
            "p95_ms": p95(lat),
            "seconds_until_searchable": round(total, 3),
            "what": "one writer, Memstream.add(text, wait=False) on the corpus (file log): "
            "each returns once its event is fsynced in the log; the clock stops when all are "
            "projected (catch_up), and the last is then found by a search",
        }
        say(f"sequential durable add: {run.result['seq_add_durable_ps']} memories/s "
            f"(p50 {p50(lat)} ms an add, all searchable after {total:.2f} s)")  # fmt: skip

        # -- 6. as-of reads, when the core has them ------------------------------------------
        # Memstream.get_all passes **kwargs through to MemoryReader.get_all, which has as_of
        from memstream.query.reader import MemoryReader

        params = {
            **inspect.signature(Memstream.get_all).parameters,
            **inspect.signature(MemoryReader.get_all).parameters,
        }
        if "as_of" not in params:
            run.result["asof_ms"] = None
            run.details["asof"] = {
                "skipped": "Memstream.get_all has no as_of parameter yet (point-in-time reads "
                "are being built in query/ by another engineer)"
            }
            say("asof: skipped (no as_of parameter on Memstream.get_all)")
        else:
            n_events = run.details.get("corpus", {}).get("events", a.scale)
            cuts: dict[str, Any] = {
                "middle_offset": n_events // 2,  # an int = an offset on partition 0
                "now": datetime.now(UTC).isoformat(),  # every event: the largest fold
            }
            asof: dict[str, Any] = {"events_in_log": n_events}
            for label, cut in cuts.items():
                lat = []
                for _, user in queries[: min(len(queries), 10)]:
                    t = time.perf_counter()
                    page = await ms.get_all({"user_id": user}, tenant=TENANT, as_of=cut)  # type: ignore[call-arg]
                    lat.append((time.perf_counter() - t) * 1000)
                asof[label] = {"as_of": cut, "calls": len(lat), "p50_ms": p50(lat),
                               "p95_ms": p95(lat), "last_count": page.count}  # fmt: skip
            run.result["asof_ms"] = asof["middle_offset"]["p50_ms"]
            run.details["asof"] = asof
            say(f"asof: get_all as of the middle of the log p50 {run.result['asof_ms']} ms, "
                f"as of now p50 {asof['now']['p50_ms']} ms")  # fmt: skip
    finally:
        await ms.close()
