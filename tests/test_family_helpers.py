"""A tiny random model and a fixed-shape task for the search-family tests."""
import functools

import jax.numpy as jnp
import numpy as np
from flax import nnx

import models
from tsearch.tasks import base
from tsearch.tasks import vocab as V


class FixedSteps(base.Task):
  """Answers of exactly ``steps`` steps of ``step_tokens`` tokens: digits,
  then ``"\\n"`` (EOS after the last step), so every answer has
  ``T = steps * step_tokens`` tokens and token counts follow from the
  configuration. Reward 1 when the answer's first digit is even."""

  def __init__(self, *, steps: int = 3, step_tokens: int = 3):
    self.name = "fixed_steps"
    self.vocab = V.ARITH_VOCAB
    self.steps, self.step_tokens = steps, step_tokens
    self.max_answer_length = steps * step_tokens
    self.max_prompt_length = 6

  def options(self):
    return dict(steps=self.steps, step_tokens=self.step_tokens)

  def prompt_text(self, problem):
    return f"{problem}:"

  def sample_problems(self, seed, num):
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.integers(0, 10 ** rng.integers(1, 4, num))]

  def mask_at(self, length):
    """``[B, V]`` legal tokens after ``length [B]`` answer tokens."""
    s, t = self.step_tokens, self.max_answer_length
    end_of_step = (length % s) == s - 1
    last = length == t - 1
    ids = jnp.arange(self.vocab.size)[None]
    digit = (ids >= V.DIGIT0) & (ids < V.DIGIT0 + 10)
    delim = jnp.where(last[:, None], ids == V.EOS, ids == V.NEWLINE)
    return jnp.where(end_of_step[:, None], delim, digit)

  def _init(self, prompt_tokens, base_state):
    return base_state

  def _grammar_mask(self, state):
    return self.mask_at(state.length)

  def _update(self, state, token):
    return state

  def _reward(self, state):
    first = state.tokens[:, 0] - V.DIGIT0
    return state.valid & state.done & (first % 2 == 0)


@functools.lru_cache(maxsize=None)
def tiny_model(vocab_size: int, max_seq_len: int, seed: int = 0):
  cfg = models.ModelConfig(vocab_size=vocab_size, num_layers=1, d_model=16,
                           num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32,
                           max_seq_len=max_seq_len)
  return nnx.split(models.Transformer(cfg, rngs=nnx.Rngs(seed)))


def model_for(task, seed: int = 0):
  return tiny_model(task.vocab.size,
                    task.max_prompt_length + task.max_answer_length, seed)
