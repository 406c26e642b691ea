"""Pure core: principles, records, configs, digests, prompt templates, aggregation and I/O.

Nothing here imports torch, transformers, peft, kfp or kubernetes (checked by import-linter).
"""
