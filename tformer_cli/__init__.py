"""tformer: a command-line laboratory for decoder-only (GPT-style) transformers."""

__version__ = "0.1.0"
