"""Opening a GGUF for conversion: `GGUFHeader` (struct over a memory map) against `gguf.GGUFReader`,
interleaved in one process, on SmolLM2-135M's GGUF (49k-token vocabulary and 49k merges).

    python benchmarks/bench_gguf_header.py [--reps 5] [GGUF]

Each rep opens the file with both readers and lists every tensor's name, shape and byte size: what
a conversion needs before it reads any data. Prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout first: its packages, fixtures/


def open_ours(path: Path) -> int:
    from ascend_convert.readers.gguf_header import GGUFHeader

    header = GGUFHeader(path)
    return sum(t.data.nbytes for t in header.tensors)


def open_gguf(path: Path) -> int:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return sum(int(t.n_bytes) for t in reader.tensors)


def main() -> None:
    from ascend_common.smollm2 import smollm2_gguf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", nargs="?", type=Path, default=None)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    path = args.gguf or smollm2_gguf()
    times: dict[str, list[float]] = {"GGUFHeader": [], "gguf.GGUFReader": []}
    sizes = {}
    for _ in range(args.reps):
        for name, fn in (("GGUFHeader", open_ours), ("gguf.GGUFReader", open_gguf)):
            t0 = time.perf_counter()
            sizes[name] = fn(path)
            times[name].append(time.perf_counter() - t0)
    assert sizes["GGUFHeader"] == sizes["gguf.GGUFReader"], sizes  # the same tensor table
    ours, base = (statistics.median(times[k]) for k in times)
    print(f"{path.name}: {sizes['GGUFHeader']:,} tensor bytes, median of {args.reps} interleaved opens")
    print(f"  gguf.GGUFReader  {base * 1e3:9.1f} ms")
    print(f"  GGUFHeader       {ours * 1e3:9.1f} ms   ({base / ours:,.0f}x faster)")


if __name__ == "__main__":
    main()
