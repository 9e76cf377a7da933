"""`memstream` command line: the ledger on the embedded defaults, or on Kafka with --kafka.

The commands live in modules named after what they act on; each registers itself on the one
Typer `app` of `memstream.cli.common`, which holds the options and helpers they share. This
module only imports them (in the order `--help` lists them) and runs the app.
"""

from __future__ import annotations

import sys

from memstream.cli.common import app

__all__ = ["app", "main"]

# Each command module registers its commands on `app`; the order of these imports is the order
# `--help` lists them in, so they are not sorted.
from memstream.cli import memories, projection, serving, dashboard  # noqa: E402, F401, I001
from memstream.cli import audit, erase, log, retention, inference, webhooks  # noqa: E402, F401
from memstream.cli import mcp_server  # noqa: E402, F401


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--json" in args[1:]:  # accept the global flag after the command too, as users write it
        cut = args.index("--") if "--" in args else len(args)
        args = ["--json", *[a for a in args[:cut] if a != "--json"], *args[cut:]]
    try:
        app(args=args)
    except BrokenPipeError:
        sys.exit(1)
