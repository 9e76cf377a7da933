"""Ask a running `memstream serve` of the same data directory instead of opening the ledger.

`get-all`, `search` and a verbatim `add` are sent, when such a server runs with the same
settings, over its local Unix socket (memstream/local_server.py: discovery and why it is
safe; memstream/server/local_cli.py: the server's half, which runs the same `Memstream`
call). The answer is the call's result, printed by the same code as without a server, so the
output is the same. http.client, not httpx: one request needs no more, and the import is
what this saves.

When no such server answers, the command answers by itself (`NOT_FORWARDED`). That is also
what a read does when anything goes wrong on the way. An add never does once its request
may have reached the server: if no answer comes back, the add may or may not have been
written, so the command says so and exits 1 instead of adding a second time.
`--no-server` (MEMSTREAM_NO_SERVER=1) never forwards.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any, Final

from memstream.cli.common import fail, state
from memstream.local_server import AUTH_SCHEME, PATH, LocalServer, discover

CONNECT_TIMEOUT_S = 2.0
ANSWER_TIMEOUT_S = 660.0  # a write waits for its projection (the projector's wait is 600 s)


class _NotForwarded:
    def __repr__(self) -> str:
        return "NOT_FORWARDED"


NOT_FORWARDED: Final = _NotForwarded()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=CONNECT_TIMEOUT_S)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        sock.settimeout(ANSWER_TIMEOUT_S)
        self.sock = sock


def forward(op: str, args: dict[str, Any], *, write: bool = False) -> Any:
    """The server's result of `op`, NOT_FORWARDED when the command must answer by itself;
    the server's error ends the command as the command's own would (exit 2 for bad input)."""
    if state.no_server:
        return NOT_FORWARDED
    server = discover(state.settings)
    if server is None:
        return NOT_FORWARDED
    body = json.dumps({"op": op, "org_id": state.settings.org_id,
                       "project_id": state.settings.project_id, "args": args}).encode()  # fmt: skip
    conn = _UnixConnection(server.socket)
    try:
        conn.connect()
    except OSError:  # refused, gone, too slow to accept: nothing was sent
        conn.close()
        return NOT_FORWARDED
    try:
        conn.request("POST", PATH, body=body, headers={
            "Authorization": f"{AUTH_SCHEME} {server.token}",
            "Content-Type": "application/json",
        })  # fmt: skip
        response = conn.getresponse()
        status, data = response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        if write:
            _unknown(server, repr(exc), 1)
        return NOT_FORWARDED
    except KeyboardInterrupt:
        if write:
            _unknown(server, "interrupted", 130)
        raise
    finally:
        conn.close()
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or answer.get("local") is not True:
        # the request did not reach the route (401, 404 of an older server, 413, 422) or
        # broke inside it (500): only the latter may have written something
        if write and status >= 500:
            _unknown(server, f"HTTP {status}", 1)
        return NOT_FORWARDED
    if status == 200:
        return answer["result"]
    fail(str(answer.get("detail")), code=2 if answer.get("validation") else 1)


def _unknown(server: LocalServer, why: str, code: int) -> None:
    fail(
        f"the add was sent to the memstream server of this data directory (pid {server.pid}) "
        f"but its answer did not come back ({why}): it may or may not have been written. "
        "Look with `memstream get-all` before adding it again.",
        code=code,
    )
