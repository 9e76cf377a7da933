"""`import lancedb` without the REST namespace client an embedded connection never uses.

lancedb 0.40 imports `lance_namespace`, which imports the generated OpenAPI client package
`lance_namespace_urllib3_client`, whose `__init__` imports every API module of the client:
~1.4 s of lancedb's ~2.5 s import on the benchmark machine (issue 16, section 7), paid by
every CLI command. memstream opens LanceDB directories only, which needs the client's
`models` subpackage (imported by lancedb and lance_namespace) but never its API classes.

`defer_namespace_client()` registers that package as a placeholder whose submodules import
normally (`models` among them) and whose other attributes load the real package on first
use (PEP 562 `__getattr__`), so nothing that does ask for the client breaks (upstream lance
made its own namespace import lazy the same way: lance-format/lance PR 9273). Importing
this module does it and imports lancedb: `from memstream.lancedb_import import lancedb`.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

CLIENT = "lance_namespace_urllib3_client"


def defer_namespace_client() -> None:
    """Put the placeholder in sys.modules unless the client is imported already or absent."""
    if CLIENT in sys.modules:
        return
    spec = importlib.util.find_spec(CLIENT)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    stub = types.ModuleType(CLIENT)
    stub.__spec__ = spec
    stub.__file__ = spec.origin
    stub.__path__ = list(spec.submodule_search_locations)
    stub.__package__ = CLIENT
    loader = spec.loader

    def load_on_first_use(name: str) -> Any:
        del stub.__dict__["__getattr__"]
        loader.exec_module(stub)  # the real __init__, run in the placeholder's namespace
        return getattr(stub, name)

    stub.__dict__["__getattr__"] = load_on_first_use
    sys.modules[CLIENT] = stub


defer_namespace_client()

import lancedb  # noqa: E402
from lancedb.index import BTree  # noqa: E402

__all__ = ["BTree", "defer_namespace_client", "lancedb"]
