"""`tuneloop serve`: an OpenAI-compatible HTTP server for a run, an export or any local model folder.

adapters.py  what is served: one base model and named entries on it (the base, LoRA adapters)
batcher.py   the generation worker: gathers requests into batches and decodes them with the KV cache
schemas.py   the OpenAI request bodies, validated, and the errors in OpenAI's shape
app.py       the FastAPI routes, and the guard for keys, body size, concurrency and metrics
completions.py  one request: caps, its rows on the batcher, the OpenAI response or SSE stream
reqlog.py    the traffic log (--log): a queue and a writer thread into tuneloop.traffic, which `monitor` reads
metrics.py   the Prometheus metrics behind /metrics
vllm.py      `--backend vllm`: the same model and adapters handed to vLLM's own server
"""
