#!/usr/bin/env python3
"""Aggregate generation throughput of `engine serve` with N parallel greedy streams.

Usage: serve_bench.py --url http://127.0.0.1:8080 [--streams 1,4] [--tokens 128] [--runs 3]

Each stream is a streaming /v1/completions request (temperature 0, ignore_eos, a distinct
short prompt, cache_prompt false). For each stream count it reports, per run and as the
median: aggregate generated tokens per second (all tokens of all streams divided by the wall
time from sending the first request to the end of the last stream), the mean time to first
token, and the ratio of the aggregate rate to the single-stream rate. Standard library only.
"""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse

PROMPTS = [
    "The history of the printing press",
    "A guide to growing tomatoes",
    "How rivers shape valleys",
    "The rules of chess explained",
    "Why the sky is blue",
    "A short biography of Ada Lovelace",
    "The water cycle in simple words",
    "How bicycles stay upright",
]


def stream(url, prompt, tokens, out, key):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({
        "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
        "ignore_eos": True, "cache_prompt": False,
        "stream_options": {"include_usage": True},
    })
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, headers)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    first, n, timings = None, 0, None
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("choices") and chunk["choices"][0].get("text") and first is None:
            first = time.perf_counter() - t0
        if chunk.get("usage"):
            n = chunk["usage"]["completion_tokens"]
        if chunk.get("timings"):
            timings = chunk["timings"]
    out.append({"start": t0, "end": time.perf_counter(), "ttft": first, "tokens": n, "timings": timings})


def run(url, streams, tokens, key):
    out, threads = [], []
    for i in range(streams):
        t = threading.Thread(target=stream, args=(url, PROMPTS[i % len(PROMPTS)], tokens, out, key))
        threads.append(t)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in out) - min(r["start"] for r in out)
    total = sum(r["tokens"] for r in out)
    return {
        "aggregate_tps": total / wall,
        "ttft_mean_s": statistics.mean(r["ttft"] for r in out),
        "ttft_max_s": max(r["ttft"] for r in out),
        "per_stream_tps": statistics.mean(r["timings"]["predicted_per_second"] for r in out),
        "tokens": total,
        "wall_s": wall,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--streams", default="1,4")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--api-key", default="")
    a = ap.parse_args()
    counts = [int(x) for x in a.streams.split(",")]
    run(a.url, 1, 8, a.api_key)  # warm-up
    results = {c: [] for c in counts}
    for r in range(a.runs):  # interleaved, so drift hits every configuration alike
        for c in counts:
            res = run(a.url, c, a.tokens, a.api_key)
            results[c].append(res)
            print(f"run {r + 1} streams {c}: {res['aggregate_tps']:.1f} t/s aggregate, "
                  f"{res['per_stream_tps']:.1f} t/s per stream, TTFT mean {res['ttft_mean_s'] * 1e3:.0f} ms "
                  f"(max {res['ttft_max_s'] * 1e3:.0f} ms), {res['tokens']} tokens in {res['wall_s']:.1f} s",
                  flush=True)
    base = statistics.median(r["aggregate_tps"] for r in results[counts[0]])
    print("\n| streams | aggregate t/s (median) | per-stream t/s | TTFT mean (ms) | TTFT max (ms) | vs 1 stream |")
    print("|---|---|---|---|---|---|")
    for c in counts:
        med = statistics.median(r["aggregate_tps"] for r in results[c])
        print(f"| {c} | {med:.1f} | {statistics.median(r['per_stream_tps'] for r in results[c]):.1f} | "
              f"{statistics.median(r['ttft_mean_s'] for r in results[c]) * 1e3:.0f} | "
              f"{statistics.median(r['ttft_max_s'] for r in results[c]) * 1e3:.0f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
