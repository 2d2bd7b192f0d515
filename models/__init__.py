"""Flax NNX language models with a policy (LM) head and a value head."""
from models.generate import GenerateOutput, generate, process_logits
from models.transformer import (KVContext, ModelConfig, ModelOutput,
                                Transformer, check_tokens, forward,
                                kv_cache_bytes, model_config_of)

__all__ = [
    "GenerateOutput", "KVContext", "ModelConfig", "ModelOutput", "Transformer",
    "check_tokens", "forward", "generate", "kv_cache_bytes", "model_config_of",
    "process_logits",
]
