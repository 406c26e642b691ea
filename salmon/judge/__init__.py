"""AI-feedback judges: compare two responses under one principle, in both presentation orders.

``hf`` scores with a local causal LM's logits (the method's self-judging); ``openai`` sends the
same prompts to a model server (vLLM) and reads the letters' log-probabilities; ``rules`` scores
verifiable nano principles with code.
"""
