"""Generation and scoring through a model server.

``openai_client`` speaks the OpenAI-compatible HTTP API that a vLLM server (or any compatible
endpoint) offers: model listing, readiness, and batched, concurrent ``/v1/completions`` calls
with retries. It is plain Python (standard library only): no torch, no tokenizer.
"""
