"""Drives `engine serve` with the real `openai` and `ollama` Python clients and prints what
they returned as one JSON object (the Rust test checks it). Usage: serve_clients.py URL MODEL"""

import json
import math
import sys

import ollama
from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
out = {}
greedy = {"temperature": 0}
prompt = "The capital of France is"

client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
out["openai_models"] = [m.id for m in client.models.list().data]

r = client.completions.create(model=model, prompt=prompt, max_tokens=12, **greedy)
out["openai_completion"] = {
    "text": r.choices[0].text,
    "finish_reason": r.choices[0].finish_reason,
    "completion_tokens": r.usage.completion_tokens,
    "prompt_tokens": r.usage.prompt_tokens,
}

text, usage = "", None
for chunk in client.completions.create(
    model=model, prompt=prompt, max_tokens=12, stream=True,
    stream_options={"include_usage": True}, **greedy
):
    if chunk.choices:
        text += chunk.choices[0].text
    if chunk.usage:
        usage = chunk.usage.completion_tokens
out["openai_completion_stream"] = {"text": text, "completion_tokens": usage}

messages = [{"role": "user", "content": "Name a colour."}]
c = client.chat.completions.create(model=model, messages=messages, max_tokens=10, **greedy)
out["openai_chat"] = {
    "content": c.choices[0].message.content,
    "role": c.choices[0].message.role,
    "finish_reason": c.choices[0].finish_reason,
    "prompt_tokens": c.usage.prompt_tokens,
    "timings": getattr(c, "timings", None) or (c.model_extra or {}).get("timings"),
}

text, roles, finish = "", [], None
for chunk in client.chat.completions.create(
    model=model, messages=messages, max_tokens=10, stream=True, **greedy
):
    if chunk.choices:
        d = chunk.choices[0].delta
        if d.role:
            roles.append(d.role)
        text += d.content or ""
        finish = chunk.choices[0].finish_reason or finish
out["openai_chat_stream"] = {"content": text, "roles": roles, "finish_reason": finish}

e = client.embeddings.create(model=model, input=["hello world", "bonjour"])
out["openai_embeddings"] = {
    "n": len(e.data),
    "dims": len(e.data[0].embedding),
    "norm": math.sqrt(sum(x * x for x in e.data[0].embedding)),
}

cl = ollama.Client(host=base, timeout=120)
g = cl.generate(model=model, prompt=prompt, raw=True, options={"temperature": 0, "num_predict": 12})
out["ollama_generate"] = {
    "response": g.response,
    "done": g.done,
    "done_reason": g.done_reason,
    "eval_count": g.eval_count,
    "prompt_eval_count": g.prompt_eval_count,
    "total_duration": g.total_duration,
    "eval_duration": g.eval_duration,
    "context_len": len(g.context or []),
}
text, last = "", None
for part in cl.generate(model=model, prompt=prompt, raw=True, stream=True,
                        options={"temperature": 0, "num_predict": 12}):
    text += part.response
    last = part
out["ollama_generate_stream"] = {"response": text, "done": last.done, "eval_count": last.eval_count}

ch = cl.chat(model=model, messages=messages, options={"temperature": 0, "num_predict": 10})
out["ollama_chat"] = {"content": ch.message.content, "role": ch.message.role, "done": ch.done}
text = ""
for part in cl.chat(model=model, messages=messages, stream=True,
                    options={"temperature": 0, "num_predict": 10}):
    text += part.message.content or ""
out["ollama_chat_stream"] = {"content": text}

out["ollama_list"] = [m.model for m in cl.list().models]
s = cl.show(model)
out["ollama_show"] = {
    "family": s.details.family,
    "format": s.details.format,
    "architecture": (s.modelinfo or {}).get("general.architecture"),
    "template_has_turns": "<start_of_turn>" in (s.template or ""),
}
emb = cl.embed(model=model, input="hello world")
out["ollama_embed"] = {"n": len(emb.embeddings), "dims": len(emb.embeddings[0])}
out["ollama_ps"] = [m.model for m in cl.ps().models]

try:
    client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    out["openai_unknown_model"] = None
except Exception as ex:  # the client raises NotFoundError
    out["openai_unknown_model"] = type(ex).__name__
try:
    cl.generate(model="no-such-model", prompt="x")
    out["ollama_unknown_model"] = None
except ollama.ResponseError as ex:
    out["ollama_unknown_model"] = ex.status_code

print(json.dumps(out))
