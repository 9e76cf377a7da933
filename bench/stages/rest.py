"""Stage 7: `memstream serve` on the corpus, a real HTTP client, the server's RSS."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import ORG, PROJECT, TOP_K, Run, free_port, p50, p95, say, version, vm_hwm_mb
from workload import Workload


# -- 7. REST ---------------------------------------------------------------------------------
def cli(data_dir: Path, embedder: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memstream.cli", "--data-dir", str(data_dir),
         "--embedder", embedder, *args],
        capture_output=True, text=True, **kw,
    )  # fmt: skip


async def stage_rest(run: Run, wl: Workload, data_dir: Path) -> None:
    import httpx

    a = run.args
    made = cli(data_dir, a.embedder, "keys", "create", "--org-id", ORG, "--project-id", PROJECT,
               timeout=120)  # fmt: skip
    if made.returncode != 0:
        raise RuntimeError(f"keys create failed: {made.stderr.strip()[-400:]}")
    key = made.stdout.strip().splitlines()[-1].strip()
    port = free_port()
    log_path = data_dir.parent / "server.log"
    with open(log_path, "w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "memstream.cli", "--data-dir", str(data_dir),
             "--embedder", a.embedder, "serve", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning"],
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Token {key}"}
    try:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as http:
            deadline = time.monotonic() + 180
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"server exited: {log_path.read_text()[-800:]}")
                try:
                    if (await http.get("/v1/ping/")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not answer /v1/ping/ within 180 s")
                await asyncio.sleep(0.2)
            say(f"server up on {base} (pid {server.pid})")
            warm = 3
            lat_s: list[float] = []
            for i, (query, user) in enumerate(wl.queries[: a.queries + warm]):
                t = time.perf_counter()
                r = await http.post("/v3/memories/search/", json={
                    "query": query, "filters": {"user_id": user}, "top_k": TOP_K})  # fmt: skip
                d = time.perf_counter() - t
                r.raise_for_status()
                if i >= warm:
                    lat_s.append(d * 1000)
            extra = wl.memories[a.scale + a.seq_adds : a.scale + a.seq_adds + a.rest_adds]
            lat_a: list[float] = []
            for m in extra:
                t = time.perf_counter()
                r = await http.post("/v3/memories/add/", json={
                    "messages": [{"role": "user", "content": m.text}], **m.entities()})  # fmt: skip
                d = time.perf_counter() - t
                r.raise_for_status()
                assert r.json()["results"][0]["event"] == "ADD", r.text
                lat_a.append(d * 1000)
        run.result["rest_search_p50_ms"] = p50(lat_s)
        run.result["rest_add_p50_ms"] = p50(lat_a)
        floor = add_floor_ms(data_dir.parent, a.embedder, [m.text for m in extra])
        run.result["rest_add_floor_ms"] = floor
        run.result["rest_add_vs_floor"] = (
            round(p50(lat_a) / floor, 2) if floor and p50(lat_a) is not None else None
        )
        run.details["rest"] = {
            "client": f"httpx {version('httpx')} AsyncClient, keep-alive, one request at a time",
            "searches": len(lat_s),
            "search_p95_ms": p95(lat_s),
            "adds": len(lat_a),
            "add_p95_ms": p95(lat_a),
            "add_is": "POST /v3/memories/add/ (synchronous: answers after projection)",
            "add_floor_is": "p50 of one fsynced append of the text (a 0.5 KB record) to a "
            "file plus the embedder's single-text embed of it, in the bench process: "
            "issue 16 section 6's target is rest_add_vs_floor <= 1.2",
            "search_is": 'POST /v3/memories/search/ {"query", "filters": {"user_id": X}, "top_k": 10}',
        }
        run.result["rss_mb_peak"] = vm_hwm_mb(server.pid)
        run.details["rss"] = {"of": f"the `memstream serve` process (VmHWM, pid {server.pid})"}
        say(f"rest: search p50 {p50(lat_s)} ms, add p50 {p50(lat_a)} ms, "
            f"server peak RSS {run.result['rss_mb_peak']} MB")  # fmt: skip
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def add_floor_ms(scratch: Path, embedder_name: str, texts: list[str]) -> float | None:
    """The physical floor of a synchronous add (issue 16, section 6): an fsynced append of
    the record plus one embed of its text, p50 over `texts` (same texts as the REST adds)."""
    from memstream.embedders import get_embedder

    if not texts:
        return None
    embedder = get_embedder(embedder_name)
    embedder.embed_one(texts[0])  # warm
    path = scratch / "floor.log"
    lat: list[float] = []
    with open(path, "ab") as f:
        for text in texts:
            record = text.encode().ljust(512, b" ")
            t = time.perf_counter()
            f.write(record)
            f.flush()
            os.fsync(f.fileno())
            embedder.embed_one(text)
            lat.append((time.perf_counter() - t) * 1000)
    path.unlink(missing_ok=True)
    return p50(lat)
