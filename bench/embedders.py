"""Load time and throughput of the offline MiniLM embedder.

    python -m bench.embedders [--threads 1,2] [--batches 20]

Batches of 64 short ops-style texts; medians of 3 repetitions per thread count.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

WORDS = ("api payments checkout database restart deploy latency error rate queue worker cache "
         "disk memory cpu primary replica failover timeout certificate").split()


def _text(i: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(6 + i % 8)) + f" #{i}"


async def _measure(threads: int, batches: int) -> dict[str, float]:
    from stead.storage.memory.embedders import MiniLMEmbedder

    e = MiniLMEmbedder(threads=threads)
    t = time.perf_counter()
    await e.load()
    load = time.perf_counter() - t
    texts = [_text(i) for i in range(64 * batches)]
    await e.embed(texts[:64])  # warm-up
    rates = []
    for _ in range(3):
        t = time.perf_counter()
        for b in range(0, len(texts), 64):
            await e.embed(texts[b:b + 64])
        rates.append(len(texts) / (time.perf_counter() - t))
    t = time.perf_counter()
    await e.embed([texts[0]])
    return {"threads": threads, "load_s": load, "texts_per_s": statistics.median(rates),
            "one_text_ms": (time.perf_counter() - t) * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", type=int, default=20)
    args = ap.parse_args()
    for n in (int(x) for x in args.threads.split(",")):
        r = asyncio.run(_measure(n, args.batches))
        print(f"threads={r['threads']:.0f}  load (incl. first in process)={r['load_s']:.2f} s  "
              f"batches of 64: {r['texts_per_s']:.0f} texts/s  one text: "
              f"{r['one_text_ms']:.1f} ms")


if __name__ == "__main__":
    main()
