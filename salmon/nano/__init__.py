"""The nano world: a small synthetic world in which every SALMON step is measurable.

``world`` generates prompts and responses with known attributes, ``checkers`` scores the
verifiable principles of ``principles/nano.yaml`` exactly, and ``model`` builds a tiny
Llama-architecture model and tokenizer locally (torch is imported only there).
"""
