"""The SDK calls that used to fail (issue 15's table), driven by the official `mem0ai` 2.2.1
client against a real `memstream serve`, on the file log and on real Kafka.

`MemoryClient.users()` sends no paging parameters in 2.2.1 (the Node SDK does), so paging of
`/v1/entities/` goes through the client's own authenticated HTTP session (`client.client`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import httpx
import pytest
from mem0 import MemoryClient
from mem0.exceptions import MemoryError as Mem0Error

from tests.servers import Server

BACKDATE = 1_700_000_000  # 2023-11-14T22:13:20Z


@pytest.fixture
def client(server: Server) -> Iterator[MemoryClient]:
    c = MemoryClient(api_key=server.keys["a"], host=server.base_url)
    yield c
    c.client.close()


def test_update_with_only_a_timestamp_backdates_the_memory(
    client: MemoryClient, uid: Callable[[str], str]
) -> None:
    user = uid("backdated")
    first = client.add("met Dana at the conference", user_id=user)["results"][0]["id"]
    second = client.add("Dana works on compilers", user_id=user)["results"][0]["id"]
    answer = client.update(first, timestamp=BACKDATE)
    when = dt.datetime.fromtimestamp(BACKDATE, dt.UTC)
    got = client.get(first)
    assert dt.datetime.fromisoformat(got["created_at"]) == when
    assert dt.datetime.fromisoformat(got["updated_at"]) == when
    assert answer["id"] == first and answer["memory"] == "met Dana at the conference"
    # the text is unchanged and the other memory is untouched
    other = client.get(second)
    assert dt.datetime.fromisoformat(other["created_at"]) > when
    # recorded as an event: the history shows an UPDATE carrying the timestamp
    entries = client.history(first)
    assert [e["event"] for e in entries] == ["ADD", "UPDATE"]
    assert dt.datetime.fromisoformat(entries[1]["timestamp"]) == when
    # created_at filters see the backdated time
    page = client.get_all(filters={"user_id": user, "created_at": {"lt": "2024-01-01"}})
    assert [m["id"] for m in page["results"]] == [first]
    # the newest-first order follows created_at
    listed = client.get_all(filters={"user_id": user})
    assert [m["id"] for m in listed["results"]] == [second, first]


def test_a_bad_timestamp_is_one_sentence(client: MemoryClient, uid: Callable[[str], str]) -> None:
    mid = client.add("a fact", user_id=uid("badts"))["results"][0]["id"]
    with pytest.raises(Mem0Error) as info:
        client.update(mid, timestamp="last tuesday")
    assert "timestamp: not Unix seconds or an ISO-8601 datetime" in str(info.value)


def test_entities_are_paged(server: Server, uid: Callable[[str], str]) -> None:
    key, _, _ = server.new_key("paging")
    c = MemoryClient(api_key=key, host=server.base_url)
    try:
        names = sorted(uid(f"user{i}") for i in range(5))
        for name in names:
            c.add(f"fact of {name}", user_id=name)
        everything = c.users()
        assert everything["count"] == 5 and everything["next"] is None
        seen: list[str] = []
        url: str | None = "/v1/entities/?page=1&page_size=2"
        pages = 0
        while url:
            body = c.client.get(url).raise_for_status().json()
            assert body["count"] == 5 and body["total_users"] == 5
            assert len(body["results"]) <= 2
            assert (body["previous"] is None) == (pages == 0)
            seen += [e["name"] for e in body["results"]]
            url = body["next"]
            pages += 1
        assert pages == 3 and seen == names
        last = c.client.get("/v1/entities/", params={"page": 3, "page_size": 2}).json()
        assert [e["name"] for e in last["results"]] == names[4:]
        assert "page=2" in last["previous"] and last["next"] is None
        bad = c.client.get("/v1/entities/", params={"page": 0, "page_size": 2})
        assert bad.status_code == 400 and "page" in bad.json()["detail"]
    finally:
        c.client.close()


def test_feedback_shows_in_history(client: MemoryClient, uid: Callable[[str], str]) -> None:
    mid = client.add("prefers tea", user_id=uid("fb"))["results"][0]["id"]
    client.feedback(mid, feedback="NEGATIVE", feedback_reason="she said coffee")
    entries = client.history(mid)
    assert [e["event"] for e in entries] == ["ADD", "FEEDBACK"]
    assert entries[1]["feedback"] == "NEGATIVE"
    assert entries[1]["feedback_reason"] == "she said coffee"


def test_host_ending_in_a_slash(server: Server) -> None:
    """The Node SDK joins `host/` and `/v1/...` into `//v1/...`."""
    headers = {"Authorization": f"Token {server.keys['a']}"}
    ping = httpx.get(f"{server.base_url}//v1/ping/", headers=headers, timeout=10)
    assert ping.status_code == 200 and ping.json()["project_id"] == "proj_a"
    # and the Python client with such a host works end to end
    c = MemoryClient(api_key=server.keys["a"], host=server.base_url + "/")
    try:
        assert c.project_id == "proj_a"
    finally:
        c.client.close()


def test_image_content_is_a_one_sentence_400(
    client: MemoryClient, uid: Callable[[str], str]
) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(Mem0Error) as info:
        client.add([{"role": "user", "content": image}], user_id=uid("img"))
    message = str(info.value)
    assert "messages[0].content: image and other multimodal content is not supported" in message
    assert "pydantic" not in message and "errors" not in message
    raw = client.client.post(
        "/v3/memories/add/", json={"messages": [{"role": "user", "content": image}],
                                   "user_id": uid("img")},
    )  # fmt: skip
    assert raw.status_code == 400 and set(raw.json()) == {"detail"}


def test_project_management_is_501_with_a_sentence(client: MemoryClient) -> None:
    calls: list[Callable[[], object]] = [
        lambda: client.project.create(name="another"),
        lambda: client.project.delete(),
        lambda: client.project.get_members(),
        lambda: client.project.add_member(email="dana@example.com"),
        lambda: client.project.update_member(email="dana@example.com", role="OWNER"),
        lambda: client.project.remove_member(email="dana@example.com"),
    ]
    for call in calls:
        with pytest.raises(Mem0Error) as info:
            call()
        message = str(info.value)
        assert "self-hosted memstream" in message, message
        assert "memstream keys" in message, message
    # nothing changed: the project still answers
    assert client.project.get()["project_id"] == "proj_a"
    # unauthenticated: 401, not 501
    anon = httpx.post(
        f"{client.host}/api/v1/orgs/organizations/org_a/projects/", json={"name": "x"}, timeout=10
    )
    assert anon.status_code == 401


def test_profiles_and_summaries_are_501_with_a_sentence(
    client: MemoryClient, uid: Callable[[str], str]
) -> None:
    """Both SDKs call these; a bare 404 reached users as "memory not found"."""
    user = uid("profile")
    client.add("likes hiking", user_id=user)
    calls: dict[str, Callable[[], object]] = {
        "profile": lambda: client.get_profile(user),
        "generate": lambda: client.generate_profile(user),
        "sample": lambda: client.sample_profiles(limit=2),
        "job": lambda: client.get_profile_job("job-1"),
        "settings": lambda: client.get_profile_settings(),
        "update settings": lambda: client.update_profile_settings(enabled=True),
        "summary": lambda: client.get_summary(filters={"user_id": user}),
    }
    for name, call in calls.items():
        with pytest.raises(Mem0Error) as info:
            call()
        message = str(info.value)
        assert "not implemented on a self-hosted memstream" in message, (name, message)
        assert "get_all" in message, (name, message)
    raw = client.client.get(f"/v2/entities/user/{user}/profile/")
    assert raw.status_code == 501 and set(raw.json()) == {"detail"}
    # the key is still checked first, and nothing changed
    anon = httpx.get(f"{client.host}/v2/profiles/settings/", timeout=10)
    assert anon.status_code == 401
    assert [m["memory"] for m in client.get_all(filters={"user_id": user})["results"]] == [
        "likes hiking"
    ]
