"""Reinforcement learning against the principle-following reward model (method §4)."""
