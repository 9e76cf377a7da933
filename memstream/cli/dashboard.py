"""`memstream dashboard`: the REST server with its dashboard, a key to sign in with, the URL.

The same server as `memstream serve` (on the embedded defaults unless --kafka/--data-dir say
otherwise); the only additions are a key (made for the project of --org-id/--project-id
when none is given, so a first run needs nothing else) and the printed address of the page.
"""

from __future__ import annotations

import threading
import webbrowser
from typing import Any

import typer

from memstream.cli.common import app, err, state
from memstream.cli.serving import run_keys
from memstream.errors import AuthError, ValidationError
from memstream.events import Actor


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


@app.command()
def dashboard(
    host: str = typer.Option("127.0.0.1", "--host", envvar="MEMSTREAM_HOST"),
    port: int = typer.Option(8000, "--port", envvar="MEMSTREAM_PORT", min=1, max=65535),
    key: str = typer.Option(
        None,
        "--key",
        envvar="MEMSTREAM_API_KEY",
        help="an API key to sign in with; absent: a new key for --org-id/--project-id",
    ),
    open_browser: bool = typer.Option(False, "--open", help="open the page in a browser"),
    log_level: str = typer.Option(
        "warning", "--log-level", help="critical | error | warning | info | debug"
    ),
) -> None:
    """Serve the dashboard (the REST server, on the embedded defaults) and print its URL and a key."""
    from memstream.server import serve as run_server

    settings = state.settings
    if key:
        token = key

        async def check(registry: Any) -> Any:
            try:
                return await registry.authenticate(token)
            except AuthError as exc:
                raise ValidationError(
                    f"--key: {exc.message} This data dir's keys log does not accept it "
                    "(another --data-dir, or revoked?); omit --key to make a new one."
                ) from None

        found = run_keys(check)
        org, project = found.org_id, found.project_id
        made = False
    else:
        created, key = run_keys(
            lambda r: r.create(settings.org_id, settings.project_id, "dashboard",
                               actor=Actor(source="cli:dashboard"))
        )  # fmt: skip
        org, project = created.org_id, created.project_id
        made = True
    url = f"http://{_url_host(host)}:{port}/dashboard"
    err.print(
        f"memstream dashboard for org {org}, project {project} ({settings.log_description}, "
        f"data in {settings.data_dir})"
    )
    if made:
        err.print(
            "made a new API key for it (shown once; reuse it with --key or MEMSTREAM_API_KEY):"
        )
    print(f"dashboard: {url}", flush=True)
    print(f"api key: {key}", flush=True)
    err.print("sign in with the key; Ctrl+C stops the server")
    if open_browser:
        threading.Timer(1.5, webbrowser.open, args=(url,)).start()
    run_server(settings, host=host, port=port, log_level=log_level)
