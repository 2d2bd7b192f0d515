"""The task interface: problems, tokens, and a jittable environment over them.

A :class:`Task` turns a problem into prompt tokens and runs a batched,
fixed-shape environment over the answer tokens a model writes after the
prompt. All environment methods are pure ``jnp`` functions of a frozen state
and can be called inside ``jax.jit``, ``lax.scan`` and ``shard_map``.

Shapes: ``B`` batch, ``P`` = ``task.max_prompt_length`` (prompt tokens,
BOS included, right-padded with PAD), ``T`` = ``task.max_answer_length``
(answer tokens, EOS included), ``V`` = ``task.vocab.size``.

Environment semantics shared by every task:

* ``step`` appends one token. A token that the task's grammar does not allow
  makes the answer invalid for good (``reward`` 0) but never raises. Stepping a
  terminal state is a no-op.
* ``is_terminal``: EOS was emitted (or the game ended), or ``T`` answer tokens
  were written (truncation; the reward is then 0).
* ``legal_mask``: the tokens the grammar allows next (syntax-constrained
  decoding). With ``constrain=False`` it allows every token but PAD/BOS.
  A terminal state allows only PAD.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tsearch.tasks import vocab as vocab_lib

Array = chex.Array


def select_rows(cond, new, old):
  """``new`` where ``cond [B]`` (or ``[B, ...]``, broadcast over the rest of
  each leaf's dims) holds, else ``old``, leaf by leaf of two equal pytrees:
  how a batched ``step`` leaves finished rows unchanged."""
  def sel(n, o):
    return jnp.where(cond.reshape(cond.shape + (1,) * (n.ndim - cond.ndim)),
                     n, o)
  return jax.tree.map(sel, new, old)


@chex.dataclass(frozen=True)
class TaskState:
  """The part of every task's state that :class:`Task` itself manages."""
  tokens: Array  # [B, T] int32 answer tokens so far, PAD after ``length``
  length: Array  # [B] int32 answer tokens written
  valid: Array  # [B] bool, no rule broken so far
  done: Array  # [B] bool, EOS emitted (or game over)


class Task:
  """Base class of all tasks; see the module docstring for the semantics.

  Subclasses set the attributes below in ``__init__`` and implement
  ``prompt_text``, ``sample_problems``, ``solution_text``, ``_init``,
  ``_grammar_mask``, ``_update`` and ``_reward``.

  Attributes:
    name: the registry name.
    vocab: the :class:`~tsearch.tasks.vocab.Vocabulary`.
    max_prompt_length: ``P``, prompt tokens including BOS.
    max_answer_length: ``T``, answer tokens including EOS.
    num_players: 1 for puzzles, 2 for games (values from the point of view
      of the player to move, discount -1).
    step_delimiter: token id that ends a reasoning step (``"\\n"``), or -1
      where every token is a step (Connect Four moves).
    constrain: whether ``legal_mask`` applies the grammar.
  """
  name: str
  vocab: vocab_lib.Vocabulary
  max_prompt_length: int
  max_answer_length: int
  num_players: int = 1
  step_delimiter: int = vocab_lib.NEWLINE
  constrain: bool = True
  pad_id: int = vocab_lib.PAD
  bos_id: int = vocab_lib.BOS
  eos_id: int = vocab_lib.EOS

  # ---------------------------------------------------------------- host side
  def encode(self, text: str) -> list[int]:
    return self.vocab.encode(text)

  def decode(self, ids) -> str:
    return self.vocab.decode(ids)

  def prompt_text(self, problem) -> str:
    raise NotImplementedError

  def solution_text(self, problem) -> str:
    """A correct answer written by the reference solver (without EOS)."""
    raise NotImplementedError

  # True when the task's problems come from a fixed list cut into splits
  # (Game of 24): ``sample_problems`` then takes ``split=``, and callers that
  # want a split's problems must pass it. Otherwise the split lives in the
  # seed the caller picks.
  fixed_splits = False

  def sample_problems(self, seed: int, num: int) -> list:
    """``num`` problems drawn deterministically from ``seed``."""
    raise NotImplementedError

  # ------------------------------------------- what training asks of a task
  # Problem splits beyond train/validation/test that ``sample_problems``
  # takes as ``split=`` (a fixed-list task's puzzles beyond its list).
  extra_splits: tuple[str, ...] = ()
  # Default sizes of the TFDS dataset (``tsearch.data``), over the library's.
  dataset_size_defaults: dict = {}
  # Whether ``solution_text`` writes reference answers (warm starts,
  # datasets); games have none and learn from self-play only.
  has_solutions: bool = True
  # Token that takes back the answer's first step, when the task's rules
  # allow it (None otherwise); search-and-learn can teach when to use it.
  retract_token: int | None = None

  @property
  def splits(self) -> tuple[str, ...]:
    """Every split name ``train.data`` and evaluation may ask for."""
    return ("train", "validation", "test") + tuple(self.extra_splits)

  @property
  def num_moves(self) -> int | None:
    """Steps (``step_delimiter``-ended lines) a finished answer has, when
    the task fixes it (a step-level rollout makes that many moves); None:
    not fixed (a rollout makes up to one move per answer token)."""
    return None

  def check_split(self, split: str) -> None:
    if split not in self.splits:
      raise ValueError(f"Unknown split {split!r} for task {self.name!r}; use "
                       f"one of {self.splits}.")

  # Seed of held-out problems of a sampled task: no training step uses it
  # (those come from SeedSequence). validation and test use different ones.
  EVAL_SEED = 987_654_321

  def eval_problems(self, num: int, *, split: str = "test") -> list:
    """The held-out problems evaluation reports on: a fixed-list task's
    ``split`` in order (at most ``num``), else ``num`` problems sampled
    with a fixed seed per split."""
    self.check_split(split)
    if split == "train":
      raise ValueError("Evaluate on 'validation' or 'test', not 'train'.")
    return self.sample_problems(
        self.EVAL_SEED + (0 if split == "test" else 1), num)

  def sample_with_solutions(self, seed: int, num: int) -> list:
    """``[(problem, solution_text)]`` for ``num`` sampled problems."""
    return [(p, self.solution_text(p)) for p in self.sample_problems(seed, num)]

  def split_problems(self, *, seed: int, num_validation: int) -> dict | None:
    """A fixed-list task's ``{split: [problem, ...]}``; None for tasks whose
    problems are sampled (``tsearch.data`` then draws distinct ones)."""
    del seed, num_validation
    return None

  def solver_traces(self, seed: int, batch_size: int, *, max_len: int,
                    negative_fraction: float = 0.5,
                    split: str = "train") -> dict:
    """A warm-start batch written by an exact solver (``warm_start.data =
    "solver"``): ``tokens [B, T]``, ``token_mask``, ``loss_mask``,
    ``value_mask``, ``value_target [B, T]``, ``policy_weight [B]``."""
    raise NotImplementedError(
        f"Task {self.name!r} has no exact solver for warm-start traces; set "
        "--config.warm_start.data=reference.")

  def attempts(self, state) -> Array:
    """``[B]`` float32: 1 + the take-backs each answer made."""
    return jnp.ones(state.length.shape, jnp.float32)

  def encode_prompt(self, problem) -> np.ndarray:
    """``[P]`` int32: BOS, the prompt text, PAD. Raises if it does not fit."""
    ids = [self.bos_id] + self.encode(self.prompt_text(problem))
    if len(ids) > self.max_prompt_length:
      raise ValueError(
          f"Prompt {self.prompt_text(problem)!r} needs {len(ids)} tokens but "
          f"this {self.name} task allows max_prompt_length="
          f"{self.max_prompt_length}; use a larger task option.")
    out = np.full((self.max_prompt_length,), self.pad_id, np.int32)
    out[:len(ids)] = ids
    return out

  def encode_prompts(self, problems: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Prompt tokens ``[B, P]`` int32 and prompt lengths ``[B]`` int32."""
    tokens = np.stack([self.encode_prompt(p) for p in problems])
    return tokens, (tokens != self.pad_id).sum(-1).astype(np.int32)

  def encode_answer(self, text: str, *, eos: bool = True) -> np.ndarray:
    """``[T]`` int32 answer tokens (``text`` then EOS), right-padded."""
    ids = self.encode(text) + ([self.eos_id] if eos else [])
    if len(ids) > self.max_answer_length:
      raise ValueError(
          f"Answer {text!r} needs {len(ids)} tokens but max_answer_length="
          f"{self.max_answer_length}.")
    out = np.full((self.max_answer_length,), self.pad_id, np.int32)
    out[:len(ids)] = ids
    return out

  def solution_tokens(self, problems: Sequence[Any]) -> np.ndarray:
    """Reference answers ``[B, T]`` int32 (EOS included) for ``problems``."""
    return np.stack([self.encode_answer(self.solution_text(p)) for p in problems])

  # --------------------------------------------------------------- device side
  def _init(self, prompt_tokens: Array, base: TaskState) -> Any:
    raise NotImplementedError

  def _grammar_mask(self, state) -> Array:
    raise NotImplementedError

  def _update(self, state, token: Array):
    raise NotImplementedError

  def _reward(self, state) -> Array:
    raise NotImplementedError

  def _check_prompt(self, prompt_tokens) -> Array:
    prompt_tokens = jnp.asarray(prompt_tokens)
    if prompt_tokens.ndim != 2 or prompt_tokens.shape[1] != self.max_prompt_length:
      raise ValueError(
          f"prompt_tokens must be [B, P={self.max_prompt_length}] for this "
          f"{self.name} task, got shape {prompt_tokens.shape}.")
    return prompt_tokens.astype(jnp.int32)

  def init_state(self, prompt_tokens: Array):
    """The state before any answer token, for prompts ``[B, P]``."""
    prompt_tokens = self._check_prompt(prompt_tokens)
    b = prompt_tokens.shape[0]
    base = TaskState(
        tokens=jnp.full((b, self.max_answer_length), self.pad_id, jnp.int32),
        length=jnp.zeros((b,), jnp.int32),
        valid=jnp.ones((b,), bool),
        done=jnp.zeros((b,), bool))
    return self._init(prompt_tokens, base)

  def is_terminal(self, state) -> Array:
    """``[B]`` bool: EOS emitted / game over, or the answer is full."""
    return state.done | (state.length >= self.max_answer_length)

  def legal_mask(self, state) -> Array:
    """``[B, V]`` bool: tokens allowed next (only PAD where terminal)."""
    terminal = self.is_terminal(state)
    if self.constrain:
      mask = self._grammar_mask(state)
    else:
      mask = jnp.ones((terminal.shape[0], self.vocab.size), bool)
      mask = mask.at[:, :vocab_lib.EOS].set(False)
    pad_only = jax.nn.one_hot(self.pad_id, self.vocab.size, dtype=bool)
    return jnp.where(terminal[:, None], pad_only[None], mask)

  def step(self, state, token: Array):
    """Appends ``token`` ``[B]`` int32 to each answer (no-op where terminal)."""
    token = jnp.asarray(token, jnp.int32)
    chex.assert_shape(token, state.length.shape)
    active = ~self.is_terminal(state)
    in_vocab = (token >= 0) & (token < self.vocab.size)
    safe = jnp.where(in_vocab, token, self.pad_id)
    rows = jnp.arange(token.shape[0])
    legal = in_vocab & self._grammar_mask(state)[rows, safe]
    new = self._update(state, safe)
    pos = jnp.minimum(state.length, self.max_answer_length - 1)
    new = new.replace(
        tokens=state.tokens.at[rows, pos].set(token),
        length=state.length + 1,
        valid=new.valid & legal,
        done=new.done | (token == self.eos_id))
    return select_rows(active, new, state)

  def step_ended(self, state, token: Array) -> Array:
    """``[B]`` bool: ``token`` ``[B]``, just stepped into ``state``, ends a
    reasoning step. Here: it is the ``step_delimiter`` token (every token
    where the task has none, ``step_delimiter == -1``). Searches and the
    decoder end a step here or at the end of the answer; a task whose
    delimiter is not one token (text over a real tokenizer) overrides it."""
    token = jnp.asarray(token, jnp.int32)
    if self.step_delimiter < 0:
      return jnp.ones(token.shape, bool)
    return token == self.step_delimiter

  def answer_ids(self, state) -> Array | None:
    """``[B]`` int32 ids of the final answers (equal id, equal answer;
    negative: none), for majority voting over answers written in different
    words; None: answers are compared token by token (symbol tasks)."""
    del state
    return None

  def reward(self, state) -> Array:
    """``[B]`` float32 exact verifier reward (1.0 correct, 0.0 otherwise)."""
    return self._reward(state).astype(jnp.float32)

  def discount(self, state) -> Array:
    """``[B]`` float32 discount on the edge into ``state``: 0 where terminal,
    else 1 (one player) or -1 (two players, values flip sign)."""
    other = 1.0 if self.num_players == 1 else -1.0
    return jnp.where(self.is_terminal(state), 0.0, other).astype(jnp.float32)

  def run(self, prompt_tokens: Array, answer_tokens: Array):
    """The state after stepping every token of ``answer_tokens`` ``[B, L]``."""
    answer_tokens = jnp.asarray(answer_tokens, jnp.int32)
    if answer_tokens.ndim != 2:
      raise ValueError(f"answer_tokens must be [B, L], got {answer_tokens.shape}.")
    state = self.init_state(prompt_tokens)
    state, _ = jax.lax.scan(lambda s, t: (self.step(s, t), None), state,
                            answer_tokens.T)
    return state

  def verify(self, prompt_tokens: Array, answer_tokens: Array) -> Array:
    """``[B]`` float32 reward of whole answers ``[B, L]`` (any ``L``; PAD after
    EOS is ignored, an answer without EOS gets 0). Jittable."""
    return self.reward(self.run(prompt_tokens, answer_tokens))

  def __repr__(self):
    fields = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options().items()))
    return f"{type(self).__name__}({fields})"

  def options(self) -> dict:
    """The keyword options that recreate this task with ``get_task``."""
    return {}

  # Tasks are configuration only, so jit can treat them as static.
  def __hash__(self):
    return hash((type(self), tuple(sorted(self.options().items()))))

  def __eq__(self, other):
    return type(self) is type(other) and self.options() == other.options()
