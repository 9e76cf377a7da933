"""Suite-wide settings: the real Kafka broker fixture, and Hypothesis without wall-clock limits.

Hypothesis' per-example deadline (200 ms) and its too-slow health check are wall-clock
thresholds; on a shared 2-core machine they failed property tests whose properties held
(DeadlineExceeded at 285 ms in test_avro under load). The properties are what the tests
check; speed is measured by bench/, as ratios.
"""

import contextlib
import importlib
import pkgutil

import anyio
from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.kafka_broker"]

settings.register_profile("memstream", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("memstream")


def _import_anyio_now() -> None:
    """Import every module of anyio here, in the main thread, before any test starts threads.

    Why: pytest rewrites each module of a plugin's distribution (anyio ships a pytest plugin)
    with `ast.parse` when it is first imported, and anyio imports its parts lazily, so two
    threads of one test (an in-process MCP server and its client) could do so at the same
    moment. CPython 3.11's AST constructor keeps its recursion counter per interpreter, not
    per thread (python/cpython#106905), and a fresh-clone run failed with "SystemError: AST
    constructor recursion depth mismatch" in tests/e2e/test_mcp.py."""
    for module in pkgutil.walk_packages(anyio.__path__, "anyio."):
        with contextlib.suppress(ImportError):  # a backend whose library is not installed
            importlib.import_module(module.name)


_import_anyio_now()
