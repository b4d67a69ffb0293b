"""Which hash names contents: SHA-256 against BLAKE2b and xxh3-128, on one large file and
on 10,000 small ones, in one process (scheduler/core/assets.py says why SHA-256).

    python bench/hashing.py            # xxh3 only if `pip install xxhash` was done
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable


def best_of(runs: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    hashers: dict[str, Callable[[bytes], str]] = {
        "sha256": lambda d: hashlib.sha256(d).hexdigest(),
        "blake2b-256": lambda d: hashlib.blake2b(d, digest_size=32).hexdigest(),
    }
    try:
        import xxhash

        hashers["xxh3-128"] = lambda d: xxhash.xxh3_128(d).hexdigest()
    except ImportError:
        print("(xxhash not installed: pip install xxhash to compare xxh3-128)")
    large = os.urandom(256 * 2**20)
    small = [os.urandom(200) for _ in range(10_000)]
    print(f"{'hash':<12} {'MiB/s, 256 MiB':>16} {'ms, 10,000 x 200 B':>20}")
    for name, digest in hashers.items():
        seconds = best_of(3, lambda digest=digest: digest(large))
        many = best_of(3, lambda digest=digest: [digest(d) for d in small])
        print(f"{name:<12} {256 / seconds:>16.0f} {many * 1000:>20.1f}")


if __name__ == "__main__":
    main()
