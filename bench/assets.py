"""A scene of many small files: up to the farm, and laid out on a node, against local copies.

Upload: a scene folder of N small files (a few bytes to 8 KiB each, all different) goes
through the studio CLI's own path (``describe_files`` hashes them, then ``send_files``:
``POST /v1/assets/missing``, tars of contents to ``POST /v1/blobs``, ``POST
/v1/manifests``) to the embedded farm's API (``LocalFarm``, no render node), over
HTTP on localhost; then the same folder again, which must send no content. Baselines,
in the same round: ``shutil.copytree`` of the folder, and a tar of it, on local disk.

Layout: a node lays the manifest's files out for an attempt (``workers.assets.lay_out``)
from the API with the node token (no shared storage), with a cold cache (every
content fetched) and then a warm one (every content a hit, hard-linked). Baseline: the
cold layout, and ``shutil.copytree`` of the folder.

    python bench/assets.py                       # 10,000 files, 3 rounds, a table
    python bench/assets.py --json                # the medians and ratios as JSON
    python bench/assets.py --files 2000 --rounds 1 --timeout 60   # the CLI's own timeout
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dispatch import free_port
from scheduler.launch.demo import studio_key
from scheduler.launch.embedded import EmbeddedRedis, LocalFarm
from scheduler.launch.studio import Api, Profile, describe_files, send_files
from scheduler.settings import Settings
from workers.assets import BlobCache, HttpFiles, lay_out

NODE_TOKEN = "bench-node-token-0123456789"


class CountingTransport(httpx.HTTPTransport):
    """HTTP that counts what it sends: requests, and body bytes (tar headers included)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0
        self.bytes = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        self.bytes += int(request.headers.get("content-length", 0))
        return super().handle_request(request)


def make_scene(folder: Path, files: int, seed: int) -> int:
    """``files`` different small files, 100 a folder; their total size."""
    rng = random.Random(seed)
    total = 0
    for n in range(files):
        size = int(2 ** rng.uniform(2, 13))  # 4 B to 8 KiB, most of them small
        path = folder / f"assets/{n // 100:03d}/part_{n:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        total += size
    return total


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def tar_folder(folder: Path, into: Path) -> None:
    with tarfile.open(into, "w") as tar:
        tar.add(folder, arcname=".")


def upload(api_url: str, key: str, scene: Path, timeout: float) -> dict[str, Any]:
    """Hash the scene's files and send what the farm lacks, as ``renderfarm submit``
    does: seconds for each step, what was sent, the manifest's id. (``timeout``: the
    CLI's 60 s is too short for one tar of 10,000 files on a slow API.)"""
    transport = CountingTransport()
    api = Api(Profile(api_url, key), transport=transport)
    api.client.timeout = httpx.Timeout(timeout)
    try:
        files = sorted(p for p in scene.rglob("*") if p.is_file())
        hash_s, described = timed(lambda: describe_files(scene, files))
        send_s, (manifest_id, sent) = timed(lambda: send_files(api, described))
    finally:
        api.close()
    return {
        "seconds": hash_s + send_s,
        "hash_seconds": hash_s,
        "send_seconds": send_s,
        "content_bytes": sent.bytes,
        "files_sent": sent.files,
        "wire_bytes": transport.bytes,
        "requests": transport.requests,
        "manifest_id": manifest_id,
    }


def layout(api_url: str, manifest_id: int, cache: BlobCache, dest: Path) -> dict[str, Any]:
    """Lay the manifest out under ``dest`` from the API: seconds, contents fetched."""
    fetched, hits = cache.fetched, cache.hits
    with httpx.Client(base_url=api_url, timeout=60.0) as client:
        seconds, entries = timed(
            lambda: lay_out(manifest_id, dest, cache, HttpFiles(client, NODE_TOKEN))
        )
    cache.release()
    return {
        "seconds": seconds,
        "files": len(entries),
        "fetched": cache.fetched - fetched,
        "hits": cache.hits - hits,
    }


def bench_round(
    api_url: str, key: str, work: Path, files: int, seed: int, timeout: float
) -> dict[str, Any]:
    """One round on a fresh scene (new contents, so the farm lacks them all)."""
    scene = work / "scene"
    scene_bytes = make_scene(scene, files, seed)
    copy_s, _ = timed(lambda: shutil.copytree(scene, work / "copy"))
    tar_s, _ = timed(lambda: tar_folder(scene, work / "scene.tar"))
    first = upload(api_url, key, scene, timeout)
    again = upload(api_url, key, scene, timeout)
    if first["files_sent"] != files or again["content_bytes"] != 0:
        raise RuntimeError(f"unexpected upload: first {first}, again {again}")
    cache = BlobCache(work / "node" / "cache", 10 * 2**30)
    cold = layout(api_url, first["manifest_id"], cache, work / "node" / "attempt-1")
    warm = layout(api_url, first["manifest_id"], cache, work / "node" / "attempt-2")
    if cold["fetched"] != files or warm["fetched"] != 0:
        raise RuntimeError(f"unexpected layout: cold {cold}, warm {warm}")
    return {
        "scene_bytes": scene_bytes,
        "copytree_seconds": copy_s,
        "tar_seconds": tar_s,
        "upload": first,
        "upload_again": again,
        "layout_cold": cold,
        "layout_warm": warm,
    }


def median(rounds: list[dict[str, Any]], *keys: str) -> float:
    def value(round_: dict[str, Any]) -> float:
        for key in keys:
            round_ = round_[key]
        return float(round_)  # type: ignore[arg-type]

    return statistics.median(value(r) for r in rounds)


def summary(rounds: list[dict[str, Any]], files: int) -> dict[str, Any]:
    upload_s = median(rounds, "upload", "seconds")
    copy_s = median(rounds, "copytree_seconds")
    cold_s = median(rounds, "layout_cold", "seconds")
    warm_s = median(rounds, "layout_warm", "seconds")
    again_s = median(rounds, "upload_again", "seconds")
    return {
        "files": files,
        "scene_bytes": int(median(rounds, "scene_bytes")),
        "copytree_s": round(copy_s, 3),
        "tar_s": round(median(rounds, "tar_seconds"), 3),
        "upload_s": round(upload_s, 3),
        "upload_hash_s": round(median(rounds, "upload", "hash_seconds"), 3),
        "upload_send_s": round(median(rounds, "upload", "send_seconds"), 3),
        "upload_content_bytes": int(median(rounds, "upload", "content_bytes")),
        "upload_wire_bytes": int(median(rounds, "upload", "wire_bytes")),
        "upload_requests": int(median(rounds, "upload", "requests")),
        "upload_again_s": round(again_s, 3),
        "upload_again_content_bytes": int(median(rounds, "upload_again", "content_bytes")),
        "upload_again_wire_bytes": int(median(rounds, "upload_again", "wire_bytes")),
        "layout_cold_s": round(cold_s, 3),
        "layout_cold_fetched": int(median(rounds, "layout_cold", "fetched")),
        "layout_warm_s": round(warm_s, 3),
        "layout_warm_fetched": int(median(rounds, "layout_warm", "fetched")),
        "ratio_upload_to_copytree": round(upload_s / copy_s, 1),
        "ratio_upload_to_tar": round(upload_s / median(rounds, "tar_seconds"), 1),
        "ratio_upload_again_to_upload": round(again_s / upload_s, 3),
        "ratio_layout_warm_to_cold": round(warm_s / cold_s, 3),
        "ratio_layout_warm_to_copytree": round(warm_s / copy_s, 2),
        "cpus": os.cpu_count(),
    }  # fmt: skip


def print_table(result: dict[str, Any], rounds: int) -> None:
    mib = 2**20
    print(f"medians of {rounds} rounds, {result['files']} files, "
          f"{result['scene_bytes'] / mib:.1f} MiB, {result['cpus']} CPUs")  # fmt: skip
    rows = [
        ("copytree (local baseline)", result["copytree_s"], ""),
        ("tar of the folder (local baseline)", result["tar_s"], ""),
        ("upload: hash + send", result["upload_s"],
         f"{result['upload_content_bytes'] / mib:.1f} MiB of contents, "
         f"{result['upload_wire_bytes'] / mib:.1f} MiB sent, {result['upload_requests']} requests"),
        ("  of which hashing", result["upload_hash_s"], ""),
        ("upload again (nothing new)", result["upload_again_s"],
         f"{result['upload_again_content_bytes']} B of contents, "
         f"{result['upload_again_wire_bytes'] / mib:.1f} MiB sent (the file list)"),
        ("node layout, cold cache", result["layout_cold_s"],
         f"{result['layout_cold_fetched']} fetched"),
        ("node layout, warm cache", result["layout_warm_s"],
         f"{result['layout_warm_fetched']} fetched"),
    ]  # fmt: skip
    for label, seconds, note in rows:
        print(f"{label:<38}{seconds:>9.3f} s  {note}")
    for key in (k for k in result if k.startswith("ratio_")):
        print(f"{key.removeprefix('ratio_').replace('_', ' '):<38}{result[key]:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="HTTP, seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="renderfarm-bench-") as folder:
        os.environ["RENDERFARM_NODE_TOKEN"] = NODE_TOKEN  # the API's, for the node's fetches
        embedded = EmbeddedRedis()
        embedded.start()
        try:
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                data_dir=Path(folder) / "farm",
                broker_url=embedded.url,
            )
            with LocalFarm(settings, workers=0, api_port=free_port()) as farm:
                key = studio_key(settings)
                for round_ in range(args.rounds):
                    work = Path(folder) / f"round-{round_}"
                    rounds.append(
                        bench_round(farm.api_url, key, work, args.files, round_, args.timeout)
                    )
                    shutil.rmtree(work)
                    done = rounds[-1]
                    print(
                        f"round {round_ + 1}: upload {done['upload']['seconds']:.2f} s, "
                        f"again {done['upload_again']['seconds']:.2f} s, "
                        f"layout cold {done['layout_cold']['seconds']:.2f} s, "
                        f"warm {done['layout_warm']['seconds']:.2f} s, "
                        f"copytree {done['copytree_seconds']:.2f} s",
                        file=sys.stderr,
                    )
        finally:
            embedded.stop()
    result = summary(rounds, args.files)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result, args.rounds)


if __name__ == "__main__":
    main()
