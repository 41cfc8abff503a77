#!/usr/bin/env python3
"""Generation speed of one greedy request against a running server, for speculative decoding.

Usage: spec_bench.py --url http://127.0.0.1:8080 --prompt-file FILE [--tokens 128] [--runs 3]

Sends the prompt as a non-streaming /v1/completions request (temperature 0, ignore_eos,
cache_prompt false) once to warm up, then `runs` times, and prints the mean and standard
deviation of `timings.predicted_per_second` (generation only, as llama-server and
`engine serve` both report it), whether every run produced the same text, and llama-server's
draft counters when it reports them. Standard library only.
"""

import argparse
import http.client
import json
import statistics
import urllib.parse


def request(url, prompt, tokens):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({"prompt": prompt, "max_tokens": tokens, "temperature": 0,
                       "ignore_eos": True, "cache_prompt": False})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    assert resp.status == 200, data
    return json.loads(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--prompt-file", required=True)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    prompt = open(a.prompt_file).read()
    request(a.url, prompt, a.tokens)  # warm-up
    rates, texts, drafts = [], set(), None
    for _ in range(a.runs):
        r = request(a.url, prompt, a.tokens)
        t = r["timings"]
        rates.append(t["predicted_per_second"])
        texts.add(r["choices"][0]["text"])
        drafts = {k: v for k, v in t.items() if "draft" in k} or None
    sd = statistics.stdev(rates) if len(rates) > 1 else 0.0
    print(f"generation t/s {statistics.mean(rates):.2f} ± {sd:.2f} "
          f"(runs {', '.join(f'{x:.1f}' for x in rates)}); same text every run: {len(texts) == 1}"
          + (f"; draft counters of the last run: {drafts}" if drafts else ""))


if __name__ == "__main__":
    main()
