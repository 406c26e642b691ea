"""salmon: align base language models with a handful of principles (SALMON, SELF-ALIGN).

The package root stays light: importing ``salmon`` loads no torch, transformers or kfp.
"""

__version__ = "0.1.0"
