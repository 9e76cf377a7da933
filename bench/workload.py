"""The benchmark workload: realistic-ish memories spread over many users, agents and runs.

Deterministic for a seed. Every memory text is unique (so every add is an embedding-cache
miss and no add is a duplicate `NONE`), scopes follow the mix of `bench/filter_index.py`:
60% user only, 20% user + agent, 15% user + run, 5% agent only.

    from bench.workload import make_workload
    wl = make_workload(10_000, queries=100)
    wl.memories[0]  # Memory(text=..., user_id=..., agent_id=..., run_id=...)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

_SUBJECTS = [
    "The user", "She", "He", "My manager", "Our customer", "The user's partner", "I",
    "The team lead", "Their daughter", "The new hire", "My landlord", "The patient",
]  # fmt: skip
_VERBS = [
    "prefers", "is allergic to", "wants to learn", "asked about", "works on", "dislikes",
    "booked", "complained about", "recommended", "is saving up for", "forgot about",
    "needs a reminder about", "mentioned", "is excited about", "cancelled",
]  # fmt: skip
_OBJECTS = [
    "window seats on long flights", "peanuts and tree nuts", "the Kubernetes migration",
    "Italian food, especially thin-crust pizza", "morning meetings before nine",
    "a refund for the order placed last Tuesday", "learning Japanese before the trip",
    "the quarterly budget review", "a standing desk for the home office",
    "vegan restaurants near the office", "the dentist appointment", "jazz concerts",
    "the Postgres upgrade", "a hiking trip in the Dolomites", "dark mode in every app",
    "oat milk in coffee", "the annual performance review", "a gym membership",
    "the onboarding checklist", "electric cars", "the wedding anniversary dinner",
    "weekly status emails", "the broken dishwasher", "noise-cancelling headphones",
    "the marathon training plan", "spicy Thai curries", "the tax return",
    "remote work on Fridays", "the kids' school pickup", "a new laptop with more memory",
    "the on-call rotation", "gluten-free bread", "the flight to Lisbon",
    "podcasts about history", "the insurance claim", "a vintage record player",
    "the migration to the new CRM", "late check-out at hotels", "the board game night",
    "the password manager rollout",
]  # fmt: skip
_TAILS = [
    "", "since last year", "and mentioned it twice during the onboarding call",
    "according to the notes from the support ticket that was escalated",
    "but only on weekdays", "after the conversation with the account manager",
    "and wants it remembered for next time", "which came up in the last three sessions",
]  # fmt: skip
_WHEN = ["on", "as of", "noted on", "updated on"]
_QUESTIONS = [
    "what does the user think about {o}?", "anything about {o}", "preferences for {o}",
    "{o}", "did they mention {o} recently", "remind me about {o}",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Memory:
    text: str
    user_id: str | None
    agent_id: str | None
    run_id: str | None

    def entities(self) -> dict[str, str]:
        return {
            k: v
            for k, v in (
                ("user_id", self.user_id),
                ("agent_id", self.agent_id),
                ("run_id", self.run_id),
            )  # fmt: skip
            if v is not None
        }


@dataclass
class Workload:
    memories: list[Memory]
    users: list[str]
    agents: list[str]
    queries: list[tuple[str, str]] = field(default_factory=list)  # (query text, user_id)

    def texts(self) -> list[str]:
        return [m.text for m in self.memories]


def _date(rng: random.Random) -> str:
    return f"{rng.randint(2019, 2026)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def make_workload(
    n: int, *, queries: int = 100, seed: int = 7, users: int | None = None
) -> Workload:
    """`n` unique memories over `users` users (default n/200, at least 20) and 20 agents."""
    rng = random.Random(seed)
    n_users = users or max(20, n // 200)
    user_ids = [f"user-{i:06d}" for i in range(n_users)]
    agent_ids = [f"agent-{i:02d}" for i in range(20)]
    seen: set[str] = set()
    out: list[Memory] = []
    while len(out) < n:
        parts = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)]
        tail = rng.choice(_TAILS)
        if tail:
            parts.append(tail)
        text = " ".join(parts) + f" ({rng.choice(_WHEN)} {_date(rng)})."
        if text in seen:
            continue
        seen.add(text)
        user = rng.choice(user_ids)
        kind = rng.random()
        if kind < 0.60:
            mem = Memory(text, user, None, None)
        elif kind < 0.80:
            mem = Memory(text, user, rng.choice(agent_ids), None)
        elif kind < 0.95:
            mem = Memory(text, user, None, f"run-{user[5:]}-{rng.randint(0, 6)}")
        else:
            mem = Memory(text, None, rng.choice(agent_ids), None)
        out.append(mem)
    qs = [
        (rng.choice(_QUESTIONS).format(o=rng.choice(_OBJECTS)), rng.choice(user_ids))
        for _ in range(queries)
    ]
    return Workload(out, user_ids, agent_ids, qs)
