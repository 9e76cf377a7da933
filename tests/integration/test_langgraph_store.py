"""`MemstreamStore` under LangGraph: a real compiled graph whose nodes write and read long-term
memory through it (sync `invoke` -> `batch`, async `ainvoke` -> `abatch`), and the same ops run
against LangGraph's own reference store (`InMemoryStore`) with the results compared.

LangGraph ships no reusable store test suite (its store tests live in its repository, and the
`langgraph-checkpoint-conformance` package covers checkpointers only), so the reference store
is the oracle. File log and real Kafka, like every integration test.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from typing import Any, TypedDict

import pytest

if importlib.util.find_spec("langgraph") is None and not os.environ.get("CI"):
    pytest.skip("the langgraph extra is not installed", allow_module_level=True)

from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore, Item
from langgraph.store.memory import InMemoryStore

from memstream.integrations.langgraph import MemstreamStore
from memstream.service import Memstream
from memstream.settings import Settings


class State(TypedDict, total=False):
    user: str
    said: str
    recalled: list[str]


def remember(state: State, *, store: BaseStore) -> dict[str, Any]:
    n = len(store.search(("users", state["user"], "facts"), limit=100))
    store.put(("users", state["user"], "facts"), f"fact-{n}", {"content": state["said"]})
    return {}


def recall(state: State, *, store: BaseStore) -> dict[str, Any]:
    hits = store.search(("users", state["user"]), query=state["said"], limit=3)
    return {"recalled": [h.value["content"] for h in hits]}


async def arecall(state: State, *, store: BaseStore) -> dict[str, Any]:
    hits = await store.asearch(("users", state["user"]), query=state["said"], limit=3)
    return {"recalled": [h.value["content"] for h in hits]}


def graph(store: BaseStore, recall_node: Any = recall) -> Any:
    builder = StateGraph(State)
    builder.add_node("remember", remember)
    builder.add_node("recall", recall_node)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "recall")
    builder.add_edge("recall", END)
    return builder.compile(store=store)


def test_a_graph_keeps_long_term_memory_in_the_ledger(settings: Settings) -> None:
    with MemstreamStore(settings) as store:
        app = graph(store)
        app.invoke({"user": "alice", "said": "I am vegetarian"})
        app.invoke({"user": "alice", "said": "I live in Oslo"})
        app.invoke({"user": "bob", "said": "I play the cello"})
        out = app.invoke({"user": "alice", "said": "I am vegetarian"})
        # the put of this run happened before the recall: alice has three facts, bob's is apart
        assert sorted(out["recalled"]) == ["I am vegetarian", "I am vegetarian", "I live in Oslo"]
        item = store.get(("users", "alice", "facts"), "fact-1")
        assert item is not None and item.value == {"content": "I live in Oslo"}
        # the async API of the graph goes through abatch
        aapp = graph(store, arecall)
        got = asyncio.run(aapp.ainvoke({"user": "bob", "said": "cello"}))
        assert sorted(got["recalled"]) == ["I play the cello", "cello"]
        assert [i.key for i in store.search(("users", "bob"))] == ["fact-1", "fact-0"]

    # the items are memories of their users, events on the log, readable by memstream itself
    async def read() -> None:
        async with Memstream(settings) as ms:
            alice = await ms.get_all({"user_id": "alice"})
            assert sorted(m.memory for m in alice.results) == [
                "I am vegetarian", "I am vegetarian [fact-2]", "I live in Oslo"
            ]  # fmt: skip
            assert {m.metadata["lg_key"] for m in alice.results} == {"fact-0", "fact-1", "fact-2"}
            history = await ms.history(alice.results[0].id)
            assert history[0].event_type == "MemoryAdded"
            bob = await ms.get_all({"user_id": "bob"})
            assert bob.count == 2

    asyncio.run(read())


def _item(i: Item | None) -> Any:
    return None if i is None else (i.namespace, i.key, i.value)


def test_same_answers_as_langgraphs_reference_store(settings: Settings) -> None:
    reference = InMemoryStore()
    with MemstreamStore(settings) as ours:
        stores: list[BaseStore] = [reference, ours]
        writes = [
            (("users", "u1", "prefs"), "diet", {"content": "vegetarian", "rank": 1}),
            (("users", "u1", "prefs"), "seat", {"content": "window", "rank": 2}),
            (("users", "u1", "agents", "travel"), "hotel", {"content": "quiet rooms", "rank": 3}),
            (("users", "u2", "prefs"), "diet", {"content": "vegan", "rank": 1}),
            (("memories", "u1"), "m1", {"text": "no entity in this namespace", "tags": ["a"]}),
            (("agents", "travel", "notes"), "n1", {"kind": "note", "n": 5}),
            (("users", "u1", "prefs"), "diet", {"content": "pescatarian", "rank": 4}),  # overwrite
            (("users", "u2", "prefs"), "tmp", {"content": "to be deleted"}),
        ]
        for store in stores:
            for ns, key, value in writes:
                store.put(ns, key, value)
            store.delete(("users", "u2", "prefs"), "tmp")

        def both(call: Any) -> tuple[Any, Any]:
            return call(reference), call(ours)

        # before any get: the reference store creates a namespace on a get of a missing one
        listings: list[dict[str, Any]] = [
            {},
            {"prefix": ("users",)},
            {"prefix": ("users", "*", "prefs")},
            {"suffix": ("prefs",)},
            {"max_depth": 2},
            {"prefix": ("users",), "max_depth": 2, "limit": 1, "offset": 1},
        ]
        for kwargs in listings:
            ref, got = both(lambda s, kw=kwargs: s.list_namespaces(**kw))
            assert got == ref, kwargs

        for ns, key in [(("users", "u1", "prefs"), "diet"), (("users", "u2", "prefs"), "tmp"),
                        (("memories", "u1"), "m1"), (("agents", "travel", "notes"), "n1"),
                        (("users", "u1"), "diet"), (("users", "u9", "prefs"), "diet")]:  # fmt: skip
            ref, got = both(lambda s, ns=ns, key=key: _item(s.get(ns, key)))
            assert got == ref, (ns, key)

        searches: list[dict[str, Any]] = [
            {"namespace_prefix": ("users",)},
            {"namespace_prefix": ("users", "u1")},
            {"namespace_prefix": ("users", "u1", "prefs")},
            {"namespace_prefix": ("agents",)},
            {"namespace_prefix": ()},
            {"namespace_prefix": ("users",), "filter": {"rank": {"$gte": 2}}},
            {"namespace_prefix": ("users",), "filter": {"content": "vegan"}},
            {"namespace_prefix": (), "filter": {"tags": ["a"]}},
            {"namespace_prefix": ("users", "u1"), "filter": {"rank": {"$ne": 3}}},
        ]
        for kwargs in searches:
            ref, got = both(lambda s, kw=kwargs: sorted(json.dumps(_item(i), sort_keys=True) for i in s.search(
                kw["namespace_prefix"], filter=kw.get("filter"), limit=100)))  # fmt: skip
            assert got == ref, kwargs
        assert len(ours.search(("users",), limit=2)) == 2
        assert len(ours.search(("users",), limit=2, offset=3)) == 1

        # a query ranks by meaning within the prefix (the reference store has no embedder)
        hits = ours.search(("users", "u1"), query="quiet rooms")
        assert hits[0].key == "hotel" and hits[0].score is not None
