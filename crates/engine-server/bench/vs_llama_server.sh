#!/usr/bin/env bash
# `engine serve` against llama-server on the same model, threads and client, interleaved
# (engine, llama.cpp, engine, llama.cpp ...), each server started fresh for its turn.
#
#   vs_llama_server.sh streams MODEL [ROUNDS]   4 parallel greedy streams vs 1 (serve_bench.py)
#   vs_llama_server.sh spec MODEL [ROUNDS]      n-gram speculation vs plain (spec_bench.py)
#
# LLAMA_SERVER: the llama-server binary (default: $LLAMACPP_BUILD/bin/llama-server).
# `cargo xtask bench-vs-llamacpp` builds llama.cpp from the llama-cpp-python source
# distribution without its server; in that cmake build folder,
# `cmake -B . -DLLAMA_BUILD_SERVER=ON && cmake --build . --target llama-server` adds it.
# ENGINE: the engine binary (default target/release/engine).
# THREADS (default 2) and PORT (default 18095) can be set too.
set -euo pipefail
mode=${1:?streams|spec}; model=${2:?MODEL.gguf}; rounds=${3:-2}
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../../.." && pwd)
engine=${ENGINE:-$root/target/release/engine}
llama=${LLAMA_SERVER:-${LLAMACPP_BUILD:-$root/.cache/llamacpp/build}/bin/llama-server}
threads=${THREADS:-2}; port=${PORT:-18095}; url=http://127.0.0.1:$port
[ -x "$engine" ] || { echo "no engine binary at $engine (cargo build --release -p engine-cli)"; exit 1; }
[ -x "$llama" ] || { echo "no llama-server at $llama (set LLAMA_SERVER or LLAMACPP_BUILD)"; exit 1; }
prompt=$root/benches/data/edit_prompt.txt # engine bench's built-in speculative prompt

serve() { # NAME CMD...: start, wait for health, run the client, stop
  local name=$1; shift
  "$@" > /tmp/vs_llama_server.log 2>&1 & local pid=$!
  for _ in $(seq 1 200); do curl -sf -o /dev/null "$url/health" && break; sleep 0.3; done
  echo "== $name"
  if [ "$mode" = streams ]; then
    python3 "$here/serve_bench.py" --url "$url" --streams 1,4 --tokens 128 --runs 3 | grep -E '^\|'
  else
    python3 "$here/spec_bench.py" --url "$url" --prompt-file "$prompt" --tokens 128 --runs 3
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for round in $(seq 1 "$rounds"); do
  echo "# round $round"
  if [ "$mode" = streams ]; then
    serve "engine serve -np 4" "$engine" serve -m "$model" -np 4 -t "$threads" -c 2048 --port "$port"
    serve "llama-server -np 4" "$llama" -m "$model" -np 4 -t "$threads" -c 2048 --port "$port"
  else
    serve "engine serve, plain" "$engine" serve -m "$model" -np 1 -t "$threads" -c 2048 --port "$port"
    serve "engine serve --spec-type ngram" "$engine" serve -m "$model" -np 1 -t "$threads" -c 2048 --port "$port" --spec-type ngram
    serve "llama-server, plain" "$llama" -m "$model" -np 1 -t "$threads" -c 2048 --port "$port"
    serve "llama-server --spec-type ngram-simple (n 3, m 16)" "$llama" -m "$model" -np 1 -t "$threads" -c 2048 --port "$port" \
      --spec-type ngram-simple --spec-ngram-simple-size-n 3 --spec-ngram-simple-size-m 16
    serve "llama-server --spec-type ngram-map-k (n 3, m 16)" "$llama" -m "$model" -np 1 -t "$threads" -c 2048 --port "$port" \
      --spec-type ngram-map-k --spec-ngram-map-k-size-n 3 --spec-ngram-map-k-size-m 16
  fi
done
