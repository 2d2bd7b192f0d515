"""A small synthetic environment over token streams for LM-search tests."""
import dataclasses

import chex
import jax.numpy as jnp


@chex.dataclass(frozen=True)
class ToyState:
  tokens: chex.Array  # [B, T] answer tokens, -1 after length
  length: chex.Array  # [B]
  done: chex.Array  # [B] bool


@dataclasses.dataclass(frozen=True)
class ToyEnv:
  """Tokens 0 (PAD) is never legal; a token may not repeat the previous one.

  EOS ends an answer, ``max_len`` tokens truncate it; the reward of a finished
  answer is 1 if the sum of its tokens is divisible by 3, else 0.
  """
  vocab_size: int = 16
  max_len: int = 12
  eos_id: int = 1
  step_delimiter: int = 2

  def init_state(self, prompt_tokens):
    b = prompt_tokens.shape[0]
    return ToyState(tokens=jnp.full((b, self.max_len), -1, jnp.int32),
                    length=jnp.zeros((b,), jnp.int32),
                    done=jnp.zeros((b,), bool))

  def is_terminal(self, state):
    return state.done | (state.length >= self.max_len)

  def legal_mask(self, state):
    b = state.length.shape[0]
    prev = state.tokens[jnp.arange(b), jnp.maximum(state.length - 1, 0)]
    ids = jnp.arange(self.vocab_size)[None]
    mask = (ids != 0) & ((ids != prev[:, None]) | (state.length[:, None] == 0))
    return jnp.where(self.is_terminal(state)[:, None], ids == 0, mask)

  def step(self, state, token):
    active = ~self.is_terminal(state)
    rows = jnp.arange(token.shape[0])
    pos = jnp.minimum(state.length, self.max_len - 1)
    tokens = state.tokens.at[rows, pos].set(
        jnp.where(active, token, state.tokens[rows, pos]))
    return ToyState(tokens=tokens, length=state.length + active,
                    done=state.done | (active & (token == self.eos_id)))

  def reward(self, state):
    total = jnp.sum(jnp.maximum(state.tokens, 0), axis=-1)
    return jnp.where(self.is_terminal(state) & (total % 3 == 0), 1.0, 0.0)

  def discount(self, state):
    return jnp.where(self.is_terminal(state), 0.0, 1.0)
