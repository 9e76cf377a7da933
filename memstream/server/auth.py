"""`Authorization: Token <key>`: the key decides the org and project of every request.

Nothing in a request body, query or path can name another project: handlers receive a
`Caller` whose tenant comes from the key alone and pass it to every facade call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from memstream.errors import AuthError
from memstream.events import Actor
from memstream.keys import ApiKey, KeyRegistry
from memstream.models import Tenant

MAX_SOURCE = 200

token_header = APIKeyHeader(
    name="Authorization",
    scheme_name="Token",
    description="`Token <key>` (a key from `memstream keys create`); `Bearer <key>` works too.",
    auto_error=False,
)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: their key, the tenant it speaks for, and the actor for events."""

    key: ApiKey
    actor: Actor

    @property
    def tenant(self) -> Tenant:
        return self.key.tenant

    @property
    def user_email(self) -> str:
        return f"{self.key.key_id}@{self.key.org_id}.memstream"


def _token(header: str | None) -> str:
    if not header or not header.strip():
        raise AuthError(
            "Authentication credentials were not provided: send 'Authorization: Token <key>'."
        )
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() not in ("token", "bearer") or not value.strip():
        raise AuthError("Invalid Authorization header: expected 'Token <key>'.")
    return value.strip()


def _source(request: Request) -> str:
    """The calling application, for the audit trail (X-Mem0-Source, X-Application, X-Mem0-Client)."""
    for header in ("x-mem0-source", "x-application", "x-mem0-client"):
        value = request.headers.get(header)
        if value and value.isprintable():
            return f"rest:{value[:MAX_SOURCE]}"
    return "rest"


async def caller(
    request: Request, authorization: Annotated[str | None, Depends(token_header)]
) -> Caller:
    keys: KeyRegistry = request.app.state.keys
    key = await keys.authenticate(_token(authorization))
    limiter = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None:
        limiter.take(key.key_id)
    return Caller(key=key, actor=Actor(key_id=key.key_id, source=_source(request)))


CallerDep = Annotated[Caller, Depends(caller)]
