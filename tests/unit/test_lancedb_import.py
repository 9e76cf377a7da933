"""`memstream.lancedb_import`: LanceDB without its REST namespace client's API modules, and
the client still whole for whoever asks for it (each check in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_service_imports_lancedb_without_the_namespace_client_apis() -> None:
    out = run(
        "import sys, memstream.service\n"
        "before = 'lancedb' in sys.modules\n"  # loaded by the first generation opened
        "from memstream.projector.store import Generation\n"
        "import tempfile, pathlib\n"
        "Generation(pathlib.Path(tempfile.mkdtemp()), 8)\n"
        "print(before, 'lancedb' in sys.modules,\n"
        "      'lance_namespace_urllib3_client.models' in sys.modules,\n"
        "      'lance_namespace_urllib3_client.api' in sys.modules,\n"
        "      'httpx' in sys.modules)"
    )
    assert out == "False True True False False"


def test_the_deferred_client_loads_whole_on_first_use() -> None:
    out = run(
        "import sys, memstream.lancedb_import\n"
        "from lance_namespace_urllib3_client import ApiClient, TableApi\n"
        "import lance_namespace_urllib3_client as c\n"
        "print(ApiClient.__name__, TableApi.__name__, 'lance_namespace_urllib3_client.api' in "
        "sys.modules, c.models.__name__)"
    )
    assert out == "ApiClient TableApi True lance_namespace_urllib3_client.models"


def test_a_client_imported_first_is_left_alone() -> None:
    out = run(
        "import lance_namespace_urllib3_client as c, memstream.lancedb_import as m\n"
        "print(type(c).__name__, hasattr(c, 'ApiClient'), m.lancedb.__name__)"
    )
    assert out == "module True lancedb"
