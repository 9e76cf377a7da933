"""The official `mem0ai` client's webhook methods, unchanged, against a real `memstream serve`
whose dispatcher delivers to a real receiver on loopback (file log and real Kafka)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest
from mem0 import AsyncMemoryClient, MemoryClient
from mem0.exceptions import MemoryNotFoundError
from mem0.exceptions import ValidationError as Mem0ValidationError

from memstream.webhooks import verify
from tests.servers import Server
from tests.webhook_receiver import receiving


def test_the_sdk_manages_webhooks_and_the_server_delivers_signed_events(
    server: Server, uid: Callable[[str], str]
) -> None:
    client = MemoryClient(api_key=server.keys["a"], host=server.base_url)
    user = uid("hooked")
    try:
        with receiving(fail_first=1) as receiver:
            created = client.create_webhook(
                url=receiver.url, name="audit", project_id="proj_a", event_types=["memory_add"]
            )
            hook_id = created["webhook_id"]
            assert created["secret"].startswith("whsec_")
            assert created["event_types"] == ["memory_add"]
            assert created["project"] == "proj_a" and created["is_active"] is True

            listed = client.get_webhooks(project_id="proj_a")
            mine = [h for h in listed if h["webhook_id"] == hook_id]
            assert len(mine) == 1 and "secret" not in mine[0]

            added = client.add("Prefers aisle seats", user_id=user)["results"][0]
            receiver.wait_for(lambda got: len(got) >= 1)
            [first] = receiver.accepted()
            assert verify(created["secret"], first.body, first.headers["x-memstream-signature"])
            assert first.json["event_type"] == "memory_add"
            assert first.json["event_details"] == {
                "id": added["id"],
                "data": {"memory": "Prefers aisle seats", "metadata": {}, "categories": []},
                "event": "ADD",
            }
            assert first.json["user_id"] == user

            updated = client.update_webhook(
                hook_id, name="audit2", event_types=["memory_add", "memory_delete"]
            )
            assert updated["message"] == "Webhook updated successfully"
            assert updated["name"] == "audit2"
            client.delete(added["id"])
            receiver.wait_for(lambda got: len(got) >= 2)
            assert receiver.accepted()[1].json["event_details"]["event"] == "DELETE"
            assert receiver.accepted()[1].json["memory_id"] == added["id"]

            records = httpx.get(
                f"{server.base_url}/api/v1/webhooks/{hook_id}/deliveries/",
                headers={"Authorization": f"Token {server.keys['a']}"},
            ).json()
            assert [d["event_type"] for d in records] == ["memory_delete", "memory_add"]
            assert records[1]["attempts"] == 2  # the receiver's one 500, then success
            assert all(d["status"] == "succeeded" for d in records)

            # the CLI reads the same records (and lists the webhook under the key's project)
            tenant = ["--org-id", "org_a", "--project-id", "proj_a"]
            cli = server.cli("--json", *tenant, "webhooks", "deliveries", hook_id)
            assert json.loads(cli.stdout) == records
            listed_cli = json.loads(server.cli("--json", *tenant, "webhooks", "list").stdout)
            [row] = [h for h in listed_cli if h["webhook_id"] == hook_id]
            assert row["deliveries"] == {"pending": 0, "succeeded": 2, "failed": 0}

            assert client.delete_webhook(hook_id) == {"message": "Webhook deleted successfully"}
            assert hook_id not in [h["webhook_id"] for h in client.get_webhooks("proj_a")]
            with pytest.raises(MemoryNotFoundError, match="Webhook not found"):
                client.delete_webhook(hook_id)
    finally:
        client.client.close()


def test_a_key_sees_and_changes_only_its_own_projects_webhooks(server: Server) -> None:
    a = MemoryClient(api_key=server.keys["a"], host=server.base_url)
    b = MemoryClient(api_key=server.keys["b"], host=server.base_url)
    try:
        hook = a.create_webhook(
            url="http://127.0.0.1:9/never", name="x", project_id="proj_a",
            event_types=["memory_update"],
        )  # fmt: skip
        with pytest.raises(MemoryNotFoundError, match="this API key belongs to project"):
            b.get_webhooks(project_id="proj_a")
        with pytest.raises(MemoryNotFoundError, match="this API key belongs to project"):
            b.create_webhook(url="http://127.0.0.1:9/", name="y", project_id="proj_a",
                             event_types=["memory_add"])  # fmt: skip
        assert hook["webhook_id"] not in [h["webhook_id"] for h in b.get_webhooks("proj_b")]
        for call in (
            lambda: b.update_webhook(hook["webhook_id"], name="stolen"),
            lambda: b.delete_webhook(hook["webhook_id"]),
        ):
            with pytest.raises(MemoryNotFoundError, match="Webhook not found"):
                call()
        with pytest.raises(Mem0ValidationError, match="event_types"):
            a.create_webhook(url="http://127.0.0.1:9/", name="z", project_id="proj_a",
                             event_types=["memory_explode"])  # fmt: skip
        with pytest.raises(Mem0ValidationError, match="url"):
            a.create_webhook(url="ftp://example", name="z", project_id="proj_a",
                             event_types=["memory_add"])  # fmt: skip
        assert a.delete_webhook(hook["webhook_id"])["message"] == "Webhook deleted successfully"
    finally:
        a.client.close()
        b.client.close()


def test_the_async_sdk_lists_webhooks(server: Server) -> None:
    async def run() -> list[dict[str, object]]:
        client = AsyncMemoryClient(api_key=server.keys["a2"], host=server.base_url)
        try:
            hook = await client.create_webhook(
                url="http://127.0.0.1:9/", name="async", project_id="proj_a2",
                event_types=["memory_add"],
            )  # fmt: skip
            listed = await client.get_webhooks(project_id="proj_a2")
            await client.delete_webhook(hook["webhook_id"])
            return [h for h in listed if h["webhook_id"] == hook["webhook_id"]]
        finally:
            await client.async_client.aclose()

    [found] = asyncio.run(run())
    assert found["name"] == "async"
