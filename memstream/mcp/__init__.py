"""The memory ledger as an MCP server (the official `mcp` SDK): stdio and streamable HTTP.

`build_server` makes the tools; `memstream mcp` runs them over stdio (`run_stdio`) and
`memstream serve` mounts them at `/mcp` (`memstream.mcp.http`). Tools call `memstream.service`
only, with the same scoping rules and key-based tenancy as the REST API.
"""

from memstream.mcp.tools import McpCaller, build_server

__all__ = ["McpCaller", "build_server"]
