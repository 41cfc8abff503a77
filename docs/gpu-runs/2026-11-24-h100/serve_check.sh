#!/bin/bash
# engine serve on CUDA: 4 concurrent OpenAI completions (one streamed), an Ollama generate,
# and the metrics, with the same prompt greedily on the CPU for comparison.
W=/tmp/w; M=$W/gemma-3-270m-q4_k_m.gguf
bash .gpu/stage.sh > /dev/null; [ -f $M ] || cat /tmp/chunks/m? > $M; sha256sum $M | cut -c1-16
export ENGINE_NVRTC_LIB=$(ls /usr/local/cuda/lib64/libnvrtc.so.1[0-9]* | head -1) ENGINE_KERNEL_CACHE=$W/kcache
cd $W
./bin/engine serve -m $M --device cuda --parallel 4 -c 4096 --port 8091 > $OUT/serve.log 2>&1 &
for i in $(seq 1 60); do curl -sf localhost:8091/health > /dev/null && break; sleep 0.5; done
python3 - <<'PY' 2>&1 | tee $OUT/serve_client.log
import json, threading, urllib.request, time
def post(path, body):
    r = urllib.request.Request("http://localhost:8091" + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return urllib.request.urlopen(r, timeout=60)
prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "The three primary colors are"]
out = {}
def one(i, p):
    t = time.time()
    r = json.load(post("/v1/completions", {"prompt": p, "max_tokens": 48, "temperature": 0}))
    out[i] = (r["choices"][0]["text"], r["usage"], time.time() - t)
ts = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(prompts)]
[t.start() for t in ts]; [t.join() for t in ts]
for i in range(4): print("concurrent", i, repr(out[i][0][:80]), out[i][1], "%.2fs" % out[i][2])
s = post("/v1/completions", {"prompt": prompts[0], "max_tokens": 48, "temperature": 0, "stream": True})
chunks = [l for l in s.read().decode().splitlines() if l.startswith("data: ") and l != "data: [DONE]"]
text = "".join(json.loads(l[6:])["choices"][0]["text"] for l in chunks)
print("streamed chunks", len(chunks), "equal to non-streamed:", text == out[0][0])
g = json.load(post("/api/generate", {"model": "x", "prompt": prompts[0], "stream": False, "options": {"temperature": 0, "num_predict": 48}}))
print("ollama generate equal:", g["response"] == out[0][0], g.get("eval_count"))
m = urllib.request.urlopen("http://localhost:8091/metrics").read().decode()
print("\n".join(l for l in m.splitlines() if not l.startswith("#"))[:1500])
PY
kill %1; wait
./bin/engine run -m $M --device cpu -t 16 -p "The capital of France is" -n 48 --temp 0 2>/dev/null | head -3 | tee $OUT/cpu_run.log
