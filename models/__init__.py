"""Flax NNX language models with a policy (LM) head and a value head.

Decoding (greedy, sampling) is the search family's:
``tsearch.get_algorithm("greedy")`` / ``"sampling"`` (KV-cached, under the
task's legal mask).
"""
from models.transformer import (KVContext, ModelConfig, ModelOutput,
                                RopeScaling,
                                Transformer, check_tokens, forward,
                                kv_cache_bytes, model_config_of)
from models.tokenizer import Tokenizer

__all__ = [
    "KVContext", "ModelConfig", "ModelOutput", "RopeScaling", "Transformer",
    "check_tokens",
    "forward", "kv_cache_bytes", "model_config_of",
    "Tokenizer",
]
