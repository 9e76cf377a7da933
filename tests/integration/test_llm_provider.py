"""The OpenAI-compatible provider against the scripted chat-completions server: the
structured-output format it sends is built once per schema and shared by every call, so
each request must still carry exactly the schema pydantic generates, unaltered by the
calls before it."""

from __future__ import annotations

import asyncio

from memstream.llm.openai_compat import OpenAICompatibleLLM
from memstream.producers import prompts
from tests.llm_server import Reply, ScriptedLLM, decide, facts


def test_every_call_sends_the_schema_pydantic_generates() -> None:
    async def go(server: ScriptedLLM) -> None:
        llm = OpenAICompatibleLLM(server.base_url, "scripted", max_retries=0)
        try:
            for _ in range(3):
                got = await llm.complete("system", "user", prompts.Facts, "facts")
                assert got.parsed.facts == ["Likes tea"]
                decided = await llm.complete(
                    "system", "user", prompts.Decisions, "memory_decisions"
                )
                assert [d.event for d in decided.parsed.memory] == ["ADD"]
        finally:
            await llm.close()

    with ScriptedLLM() as server:
        for _ in range(3):
            server.push(facts("Likes tea"), Reply(decide({"id": "n", "text": "x", "event": "ADD"})))
        asyncio.run(go(server))
        formats = [r["response_format"] for r in server.requests]
    expected = {
        "facts": prompts.Facts.model_json_schema(),
        "memory_decisions": prompts.Decisions.model_json_schema(),
    }
    assert len(formats) == 6
    for fmt in formats:
        assert fmt["type"] == "json_schema"
        name = fmt["json_schema"]["name"]
        assert fmt["json_schema"] == {"name": name, "schema": expected[name], "strict": False}
