"""tacorl-offline: TACO-RL fine-tuning of LLMLingua-2 compressors with a reward warehouse."""

__version__ = "0.1.0"
