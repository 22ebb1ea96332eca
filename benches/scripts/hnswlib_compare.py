#!/usr/bin/env python3
"""hnswlib on the engine benchmark's exact vectors, for a side-by-side in the same run.

Called by `cargo bench -p benches --bench engine` (benches/benches/engine.rs), which writes
base.f32 / queries.f32 (little-endian f32, DIM per row) and truth.u32 (K exact neighbour ids
per query) into --dir. Builds hnswlib with M=16, ef_construction=200 on inner product (the
vectors are unit length, so this is cosine), caches the index in --dir, then for every ef in
--ef measures recall@K and the per-query p50 latency of single-query searches with one
thread — the same way the Rust side times its searches. Prints one JSON object per line.

For the graph build comparison (`graph_build` bench, same vectors, same hour):
`--n N` builds on the first N vectors (200 queries, exact truth recomputed), `--ef-construction E`
and `--threads T` set the build, and the build's CPU time (`time.process_time`) is printed beside
its wall time; such runs are not cached.

Needs: pip install hnswlib numpy
"""
import argparse
import json
import os
import time

import hnswlib
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--ef", default="16,24,32,48,64,96,128")
    ap.add_argument("--n", type=int, default=0, help="build on the first N vectors only")
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--threads", type=int, default=-1, help="build threads (-1: all cores)")
    args = ap.parse_args()
    cached = args.n == 0 and args.ef_construction == 200 and args.threads == -1

    base = np.fromfile(os.path.join(args.dir, "base.f32"), dtype="<f4").reshape(-1, args.dim)
    queries = np.fromfile(os.path.join(args.dir, "queries.f32"), dtype="<f4").reshape(-1, args.dim)
    truth = np.fromfile(os.path.join(args.dir, "truth.u32"), dtype="<u4").reshape(-1, args.k)
    if 0 < args.n < len(base):
        base = base[: args.n]
        queries = queries[:200]
        scores = queries @ base.T
        truth = np.argsort(-scores, axis=1, kind="stable")[:, : args.k].astype("<u4")

    index_path = os.path.join(args.dir, "hnswlib.index")
    build_path = os.path.join(args.dir, "hnswlib.build_secs")
    index = hnswlib.Index(space="ip", dim=args.dim)
    build_cpu = None
    if cached and os.path.exists(index_path) and os.path.exists(build_path):
        index.load_index(index_path, max_elements=len(base))
        build_secs = float(open(build_path).read())
    else:
        index.init_index(
            max_elements=len(base), ef_construction=args.ef_construction, M=16, random_seed=100
        )
        start, cpu = time.perf_counter(), time.process_time()
        index.add_items(base, np.arange(len(base)), num_threads=args.threads)
        build_secs = time.perf_counter() - start
        build_cpu = time.process_time() - cpu
        if cached:
            index.save_index(index_path)
            with open(build_path, "w") as f:
                f.write(str(build_secs))
    print(
        json.dumps(
            {
                "build_secs": build_secs,
                "build_cpu_secs": build_cpu,
                "n": len(base),
                "ef_construction": args.ef_construction,
                "threads": args.threads,
            }
        ),
        flush=True,
    )

    index.set_num_threads(1)
    for ef in [int(e) for e in args.ef.split(",")]:
        index.set_ef(ef)
        index.knn_query(queries[:50], k=args.k)  # warm up
        lat = []
        hits = 0
        for i in range(len(queries)):
            q = queries[i : i + 1]
            start = time.perf_counter()
            labels, _ = index.knn_query(q, k=args.k)
            lat.append((time.perf_counter() - start) * 1e6)
            hits += len(set(labels[0].tolist()) & set(truth[i].tolist()))
        lat.sort()
        print(
            json.dumps({"ef": ef, "recall": hits / (len(queries) * args.k), "p50_us": lat[len(lat) // 2]}),
            flush=True,
        )


if __name__ == "__main__":
    main()
