"""Tasks over a real tokenizer: text prompts, text steps, pretrained models.

Every task in :mod:`tsearch.tasks` writes its problems and answers with one
character per symbol. :func:`over_tokenizer` wraps such a task so that a model
with a Hugging Face tokenizer reads and writes it:

* **Prompt**: the text ``prefix + task.prompt_text(problem) + suffix`` (the
  prefix and suffix may come from the tokenizer's chat template), as model
  token ids. The three segments are encoded *separately* and concatenated, so
  no token straddles the problem text and its surroundings; the ids may
  therefore differ from ``tokenizer.encode`` of the whole string at the two
  seams (a model sees a valid, slightly unusual tokenization there).
  On device, the inner task's symbol prompt is rebuilt from the problem
  segment (a model token such as ``"123"`` stands for several symbols), so
  ``init_state`` needs only the model prompt tokens.
* **Answer**: one model token per task symbol. A token is legal iff its text
  is exactly one symbol the inner task allows next, or it is one of the
  tokenizer's EOS ids (the task's EOS). Any other token makes the answer
  invalid (reward 0). Rewards, terminal states, discounts and attempts are
  the inner task's.
* **Steps** end where the inner task's delimiter text (``"\\n"``) completes in
  the answer's bytes, found on token ids by a :class:`DelimiterMatcher` (a
  byte-level automaton, no re-tokenising). Steps end at token granularity: a
  token that holds the delimiter and more (``"\\n\\nThe"``) ends the step
  after the whole token.

Example (runs on CPU in seconds; ``tok`` is a ``models.Tokenizer``, or any
object with its interface)::

  import jax
  import models
  import tsearch
  from tsearch.tasks import text

  tok = models.Tokenizer.from_dir("tests/goldens/qwen2")
  task = text.over_tokenizer(tsearch.tasks.get_task("arithmetic"), tok,
                             chat_template=True, system="Answer with digits.")
  problems = task.sample_problems(seed=0, num=4)
  prompts, lengths = task.encode_prompts(problems)   # [B, P] model ids
  answers = task.solution_tokens(problems)           # [B, T] model ids + EOS
  print(task.decode(prompts[0]), task.decode(answers[0]))
  jax.jit(task.verify)(prompts, answers)             # [B] all 1.0
  # task is a tsearch.tasks.Task: pass it to tsearch.lm_search,
  # tsearch.get_algorithm(...), tsearch.rollout like any other task.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Protocol, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tsearch.tasks import base
from tsearch.tasks import vocab as vocab_lib

Array = chex.Array
_PLACEHOLDER = "TSEARCHPROMPTPLACEHOLDER"


class TokenizerLike(Protocol):
  """What :func:`over_tokenizer` needs of a tokenizer (``models.Tokenizer``)."""
  vocab_size: int
  eos_ids: tuple[int, ...]
  bos_id: int | None
  pad_id: int | None

  def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
  def decode(self, ids) -> str: ...
  def apply_chat_template(self, messages, add_generation_prompt: bool = ...,
                          tokenize: bool = ...) -> str: ...
  def token_bytes(self) -> list[bytes]: ...


# ------------------------------------------------------------------ matcher
def _kmp_table(pattern: bytes) -> np.ndarray:
  """``delta [m, 256]``: the KMP automaton's next state (``m`` = a match)."""
  m = len(pattern)
  delta = np.zeros((m, 256), np.int32)
  delta[0, pattern[0]] = 1
  fail = 0  # the state reached by pattern[1:q]
  for q in range(1, m):
    delta[q] = delta[fail]
    delta[q, pattern[q]] = q + 1
    fail = delta[fail, pattern[q]]
  return delta


@dataclasses.dataclass(frozen=True, eq=False)
class DelimiterMatcher:
  """Finds a delimiter string in a stream of token ids, token by token.

  A KMP automaton over the delimiter's UTF-8 bytes, run over every token's
  bytes once at construction: ``next_state[q, t]`` is the state after token
  ``t``'s bytes from state ``q`` and ``completes[q, t]`` says the delimiter
  completed somewhere inside them (also when it started in earlier tokens:
  ``"\\n"`` then ``"\\n"`` completes ``"\\n\\n"``). Matches do not overlap:
  after a match the automaton restarts on the token's remaining bytes.
  Memory ``m x V`` (``m`` delimiter bytes, ``V`` tokens).

  Build with :meth:`build`; ``init`` and ``update`` are jittable.
  """
  delimiter: str
  next_state: np.ndarray  # [m, V] int32
  completes: np.ndarray  # [m, V] bool

  @classmethod
  def build(cls, token_bytes: Sequence[bytes], delimiter: str
            ) -> DelimiterMatcher:
    """The matcher of ``delimiter`` over a vocabulary whose token ``i`` is
    the bytes ``token_bytes[i]``."""
    pattern = delimiter.encode("utf-8")
    if not pattern:
      raise ValueError("The step delimiter must be a non-empty string.")
    delta = _kmp_table(pattern)
    m, v = len(pattern), len(token_bytes)
    lengths = np.array([len(b) for b in token_bytes], np.int64)
    order = np.argsort(-lengths, kind="stable")  # active tokens: a prefix
    flat = np.frombuffer(b"".join(token_bytes[i] for i in order), np.uint8)
    starts = np.concatenate([[0], np.cumsum(lengths[order])[:-1]]).astype(
        np.int64)
    state = np.broadcast_to(np.arange(m, dtype=np.int32)[:, None],
                            (m, v)).copy()
    done = np.zeros((m, v), bool)
    sorted_lengths = lengths[order]  # descending
    for col in range(int(lengths.max(initial=0))):
      n = int(np.count_nonzero(sorted_lengths > col))  # tokens this long
      byte = flat[starts[:n] + col]
      nxt = delta[state[:, :n], byte[None, :]]
      hit = nxt == m
      done[:, :n] |= hit
      state[:, :n] = np.where(hit, 0, nxt)
    next_state = np.empty_like(state)
    completes = np.empty_like(done)
    next_state[:, order] = state
    completes[:, order] = done
    return cls(delimiter=delimiter, next_state=next_state,
               completes=completes)

  @property
  def vocab_size(self) -> int:
    return self.next_state.shape[1]

  def init(self, batch: int) -> Array:
    """``[batch]`` int32 states before any token."""
    return jnp.zeros((batch,), jnp.int32)

  def update(self, state: Array, token: Array) -> tuple[Array, Array]:
    """``(state, ended)``: ``[B]`` states after ``token [B]`` and whether the
    delimiter completed inside it. Ids outside ``[0, V)`` change nothing."""
    token = jnp.asarray(token, jnp.int32)
    ok = (token >= 0) & (token < self.vocab_size)
    safe = jnp.where(ok, token, 0)
    nxt = jnp.asarray(self.next_state)[state, safe]
    ended = jnp.asarray(self.completes)[state, safe]
    return jnp.where(ok, nxt, state), ok & ended


# -------------------------------------------------------------------- task
@chex.dataclass(frozen=True)
class TextState:
  """A :class:`TextTask` state: the model's answer and the inner task's."""
  tokens: Array  # [B, T] int32 model answer tokens, PAD after ``length``
  length: Array  # [B] int32
  valid: Array  # [B] bool, every token was one task symbol (or EOS)
  done: Array  # [B] bool, the inner task is terminal
  inner: Any  # the inner task's state
  prompt_ok: Array  # [B] bool, the prompt's problem text mapped to symbols
  matcher: Array  # [B] int32 DelimiterMatcher state
  step_end: Array  # [B] bool, the last token completed the step delimiter


@dataclasses.dataclass(frozen=True)
class TextVocabulary:
  """The model's vocabulary as a task sees it (``task.vocab.size``)."""
  size: int


def _utf8(b: bytes) -> str | None:
  try:
    return b.decode("utf-8")
  except UnicodeDecodeError:
    return None


def encode_answer(task: Any, text: str, *, eos: bool = True) -> np.ndarray:
  """``text``'s tokens (and EOS), padded to ``task.max_answer_length``: a
  ``[A]`` int32 row. ``task`` has ``encode``, ``eos_id``, ``pad_id`` and
  ``max_answer_length``; an answer that does not fit is an error, never cut."""
  ids = task.encode(text) + ([task.eos_id] if eos else [])
  if len(ids) > task.max_answer_length:
    raise ValueError(f"Answer {text!r} needs {len(ids)} tokens but "
                     f"max_answer_length={task.max_answer_length}.")
  out = np.full((task.max_answer_length,), task.pad_id, np.int32)
  out[:len(ids)] = ids
  return out


class TextTask(base.Task):
  """A symbol task over a real tokenizer; build with :func:`over_tokenizer`.

  Attributes (beyond :class:`~tsearch.tasks.Task`'s):
    task: the inner (symbol) task.
    prefix, suffix: the text around the problem in every prompt.
    matcher: the :class:`DelimiterMatcher` of the inner step delimiter.
  """

  def __init__(self, task: base.Task, tokenizer: TokenizerLike, *,
               prefix: str = "", suffix: str = "", add_bos: bool = True,
               pad_id: int | None = None, max_context: int | None = None):
    if isinstance(task, TextTask):
      raise ValueError("The task is already over a tokenizer; wrap the "
                       "symbol task instead.")
    if not isinstance(getattr(task, "vocab", None), vocab_lib.Vocabulary):
      raise ValueError(f"{type(task).__name__} has no symbol Vocabulary; "
                       "over_tokenizer wraps tsearch.tasks symbol tasks.")
    eos_ids = tuple(int(i) for i in (tokenizer.eos_ids or ()))
    if not eos_ids:
      raise ValueError("The tokenizer has no EOS token (eos_ids is empty); "
                       "set eos_token_id in its generation_config.json or "
                       "tokenizer_config.json.")
    self.task, self.prefix, self.suffix = task, prefix, suffix
    self._tokenizer = tokenizer
    token_bytes = list(tokenizer.token_bytes())
    v = len(token_bytes)
    texts = [_utf8(b) for b in token_bytes]
    symbols = task.vocab.symbols
    char_id = {c: i for i, c in enumerate(symbols) if i >= vocab_lib.NEWLINE}
    specials = set(eos_ids) | ({tokenizer.bos_id} - {None})

    # Answer tokens: one per symbol (the lowest id whose text is the symbol).
    canon = {}
    for i, t in enumerate(texts):
      if t is not None and len(t) == 1 and t in char_id and i not in specials:
        canon.setdefault(char_id[t], i)
    missing = [symbols[s] for s in char_id.values() if s not in canon]
    if missing:
      raise ValueError(
          f"The tokenizer has no single token for the {task.name} task's "
          f"symbol(s) {missing}; every task symbol must be one token (a "
          "byte-level BPE tokenizer has one per byte).")
    self.symbol_token = np.full((task.vocab.size,), -1, np.int32)
    answer_sym = np.full((v,), task.vocab.size, np.int32)  # = unmapped
    for s, i in canon.items():
      self.symbol_token[s] = i
      answer_sym[i] = s
    self.symbol_token[task.eos_id] = eos_ids[0]
    answer_sym[list(eos_ids)] = task.eos_id
    self._answer_sym = answer_sym

    # Prompt tokens: every token whose text is all symbols, kmax at most.
    kmax = task.max_prompt_length - 1
    rows = [(i, [char_id[c] for c in t]) for i, t in enumerate(texts)
            if t and i not in specials and len(t) <= kmax
            and all(c in char_id for c in t)]
    self._prompt_row = np.full((v,), -1, np.int32)  # row -1: the empty one
    width = max((len(s) for _, s in rows), default=1)
    self._prompt_syms = np.zeros((len(rows) + 1, width), np.int32)
    self._prompt_lens = np.zeros((len(rows) + 1,), np.int32)
    for r, (i, syms) in enumerate(rows):
      self._prompt_row[i] = r
      self._prompt_syms[r, :len(syms)] = syms
      self._prompt_lens[r] = len(syms)

    bos = tokenizer.bos_id if add_bos else None

    def encode(s):
      return list(tokenizer.encode(s, add_special_tokens=False)) if s else []
    head, tail = encode(prefix), encode(suffix)
    if bos is not None and head[:1] != [bos]:
      head = [bos] + head
    self._head, self._tail = tuple(head), tuple(tail)
    reserved = (specials | set(head) | set(tail) | set(canon.values())
                | {i for i, _ in rows})
    if pad_id is None:
      pad_id = tokenizer.pad_id
      if pad_id is None or pad_id in reserved:
        pad_id = next(i for i in range(v - 1, -1, -1) if i not in reserved)
    elif pad_id in reserved or not 0 <= pad_id < v:
      raise ValueError(f"pad_id={pad_id} is an EOS/BOS id, part of the prompt "
                       f"prefix/suffix or a task symbol's token (or outside "
                       f"[0, {v})); pick an id that prompts and answers never "
                       "contain, or leave it None.")

    self.name = f"{task.name}_text"
    self.vocab = TextVocabulary(size=v)
    self.eos_ids = eos_ids
    self.eos_id, self.pad_id = eos_ids[0], int(pad_id)
    self.bos_id = -1 if bos is None else int(bos)
    self.max_prompt_length = len(head) + task.max_prompt_length - 1 + len(tail)
    self.max_answer_length = task.max_answer_length
    if max_context is not None and (
        self.max_prompt_length + self.max_answer_length > max_context):
      raise ValueError(
          f"Prompts of up to {self.max_prompt_length} tokens ({len(head)} "
          f"prefix + {task.max_prompt_length - 1} problem + {len(tail)} "
          f"suffix) and answers of {self.max_answer_length} need more than "
          f"the model's context max_context={max_context}; use a shorter "
          "prefix/system prompt or chat template, or a longer-context model.")
    self.max_context = max_context
    self.num_players, self.constrain = task.num_players, task.constrain
    self.fixed_splits, self.extra_splits = task.fixed_splits, task.extra_splits
    self.dataset_size_defaults = task.dataset_size_defaults
    self.has_solutions = task.has_solutions
    self.retract_token = (None if task.retract_token is None
                          else int(self.symbol_token[task.retract_token]))
    if task.step_delimiter >= 0:
      self.step_delimiter = int(self.symbol_token[task.step_delimiter])
      self.matcher = DelimiterMatcher.build(
          token_bytes, symbols[task.step_delimiter])
    else:
      self.step_delimiter, self.matcher = -1, None
    digest = hashlib.sha256(repr(eos_ids).encode())
    for b in token_bytes:
      digest.update(len(b).to_bytes(4, "little") + b)
    self._key = (task, digest.hexdigest(), self._head, self._tail,
                 self.pad_id, max_context)

  # ---------------------------------------------------------- host side
  def options(self) -> dict:
    return dict(task=self.task.name, task_options=self.task.options(),
                tokenizer=self._key[1][:12], prefix=self.prefix,
                suffix=self.suffix, pad_id=self.pad_id)

  def __hash__(self):
    return hash((type(self), self._key))

  def __eq__(self, other):
    return type(self) is type(other) and self._key == other._key

  def encode(self, text: str) -> list[int]:
    """Answer token ids of ``text``: one model token per task symbol."""
    return [int(self.symbol_token[i]) for i in self.task.encode(text)]

  def decode(self, ids) -> str:
    ids = [i for i in np.asarray(ids).reshape(-1).tolist() if i != self.pad_id]
    return self._tokenizer.decode(ids)

  def prompt_text(self, problem) -> str:
    return self.prefix + self.task.prompt_text(problem) + self.suffix

  def solution_text(self, problem) -> str:
    return self.task.solution_text(problem)

  def sample_problems(self, seed: int, num: int, **kwargs) -> list:
    return self.task.sample_problems(seed, num, **kwargs)

  @property
  def splits(self) -> tuple[str, ...]:
    return self.task.splits

  @property
  def num_moves(self) -> int | None:
    return self.task.num_moves

  def eval_problems(self, num: int, *, split: str = "test") -> list:
    return self.task.eval_problems(num, split=split)

  def split_problems(self, *, seed: int, num_validation: int) -> dict | None:
    return self.task.split_problems(seed=seed, num_validation=num_validation)

  def encode_prompt(self, problem) -> np.ndarray:
    """``[P]`` int32: BOS (if any), prefix, problem text, suffix, PAD."""
    text = self.task.prompt_text(problem)
    body = list(self._tokenizer.encode(text, add_special_tokens=False))
    rows = self._prompt_row[body]
    syms = "".join(self.task.vocab.symbols[s]
                   for r in rows if r >= 0
                   for s in self._prompt_syms[r, :self._prompt_lens[r]])
    if (rows < 0).any() or syms != text:
      bad = [self._tokenizer.decode([t]) for t, r in zip(body, rows) if r < 0]
      raise ValueError(
          f"The tokenizer writes the problem {text!r} with tokens {bad} that "
          f"are not made of the {self.task.name} task's symbols; the problem "
          "text cannot be read back on device.")
    ids = list(self._head) + body + list(self._tail)
    if len(ids) > self.max_prompt_length:  # cannot happen: one symbol+ a token
      raise ValueError(f"Prompt {self.prompt_text(problem)!r} needs {len(ids)}"
                       f" tokens; max_prompt_length={self.max_prompt_length}.")
    out = np.full((self.max_prompt_length,), self.pad_id, np.int32)
    out[:len(ids)] = ids
    return out

  def encode_answer(self, text: str, *, eos: bool = True) -> np.ndarray:
    return encode_answer(self, text, eos=eos)

  # --------------------------------------------------------- device side
  def _inner_prompt(self, prompt: Array) -> tuple[Array, Array]:
    """The inner task's ``[B, P_inner]`` prompt from the model's, and
    ``[B]`` whether every problem token was made of task symbols."""
    b, p = prompt.shape
    pi = self.task.max_prompt_length
    n_head, n_tail = len(self._head), len(self._tail)
    seg = prompt[:, n_head:p - n_tail]  # [B, L]
    length = (prompt != self.pad_id).sum(1)
    n_seg = length - n_head - n_tail
    in_seg = jnp.arange(seg.shape[1])[None] < n_seg[:, None]
    safe = jnp.clip(seg, 0, self.vocab.size - 1)
    row = jnp.asarray(self._prompt_row)[safe]
    mapped = row >= 0
    count = jnp.where(in_seg & mapped, jnp.asarray(self._prompt_lens)[row], 0)
    offset = jnp.cumsum(count, axis=1) - count  # [B, L] symbols before
    syms = jnp.asarray(self._prompt_syms)[row]  # [B, L, W]
    k = jnp.arange(syms.shape[-1])
    pos = 1 + offset[..., None] + k  # after the inner BOS
    write = (k < count[..., None]) & (pos < pi)
    pos = jnp.where(write, pos, pi)  # out of range: dropped
    rows = jnp.broadcast_to(jnp.arange(b)[:, None, None], pos.shape)
    inner = jnp.full((b, pi), self.task.pad_id, jnp.int32)
    inner = inner.at[:, 0].set(self.task.bos_id)
    inner = inner.at[rows, pos].set(syms, mode="drop")
    ok = ((~in_seg | mapped).all(1) & (count.sum(1) <= pi - 1)
          & (length >= n_head + n_tail))
    return inner, ok

  def init_state(self, prompt_tokens: Array) -> TextState:
    prompt = self._check_prompt(prompt_tokens)
    b = prompt.shape[0]
    inner_prompt, ok = self._inner_prompt(prompt)
    matcher = (self.matcher.init(b) if self.matcher is not None
               else jnp.zeros((b,), jnp.int32))
    return TextState(
        tokens=jnp.full((b, self.max_answer_length), self.pad_id, jnp.int32),
        length=jnp.zeros((b,), jnp.int32), valid=jnp.ones((b,), bool),
        done=jnp.zeros((b,), bool),
        inner=self.task.init_state(inner_prompt), prompt_ok=ok,
        matcher=matcher, step_end=jnp.zeros((b,), bool))

  def is_terminal(self, state) -> Array:
    return (jnp.asarray(self.task.is_terminal(state.inner), bool)
            | (state.length >= self.max_answer_length))

  def legal_mask(self, state) -> Array:
    inner = jnp.asarray(self.task.legal_mask(state.inner), bool)
    inner = jnp.pad(inner, ((0, 0), (0, 1)))  # column V_inner: unmapped
    mask = jnp.take(inner, jnp.asarray(self._answer_sym), axis=1)
    pad_only = jax.nn.one_hot(self.pad_id, self.vocab.size, dtype=bool)
    return jnp.where(self.is_terminal(state)[:, None], pad_only[None], mask)

  def step(self, state, token: Array) -> TextState:
    token = jnp.asarray(token, jnp.int32)
    chex.assert_shape(token, state.length.shape)
    active = ~self.is_terminal(state)
    in_vocab = (token >= 0) & (token < self.vocab.size)
    sym = jnp.where(in_vocab, jnp.asarray(self._answer_sym)[
        jnp.where(in_vocab, token, 0)], self.task.vocab.size)
    mapped = sym < self.task.vocab.size
    inner = self.task.step(state.inner,
                           jnp.where(mapped, sym, self.task.pad_id))
    if self.matcher is not None:
      matcher, ended = self.matcher.update(state.matcher, token)
    else:
      matcher, ended = state.matcher, jnp.ones(token.shape, bool)
    rows = jnp.arange(token.shape[0])
    pos = jnp.minimum(state.length, self.max_answer_length - 1)
    new = state.replace(
        tokens=state.tokens.at[rows, pos].set(token),
        length=state.length + 1, valid=state.valid & mapped,
        done=jnp.asarray(self.task.is_terminal(inner), bool), inner=inner,
        matcher=matcher, step_end=ended)
    return base.select_rows(active, new, state)

  def step_ended(self, state, token: Array) -> Array:
    """``[B]`` bool: the last token completed the step delimiter's text."""
    del token
    return state.step_end

  def reward(self, state) -> Array:
    return jnp.where(state.prompt_ok,
                     jnp.asarray(self.task.reward(state.inner), jnp.float32),
                     0.0)

  def discount(self, state) -> Array:
    return jnp.asarray(self.task.discount(state.inner), jnp.float32)

  def attempts(self, state) -> Array:
    return self.task.attempts(state.inner)


def over_tokenizer(task: base.Task, tokenizer: TokenizerLike, *,
                   prefix: str = "", suffix: str = "",
                   chat_template: bool = False, system: str | None = None,
                   add_bos: bool = True, pad_id: int | None = None,
                   max_context: int | None = None) -> TextTask:
  """``task`` (a symbol task) read and written through ``tokenizer``.

  Args:
    task: e.g. ``tsearch.tasks.get_task("arithmetic")``.
    tokenizer: a ``models.Tokenizer`` (or anything with its interface:
      ``encode``, ``decode``, ``token_bytes``, ``eos_ids``, ``bos_id``,
      ``pad_id``, ``apply_chat_template``).
    prefix, suffix: text before and after the problem in every prompt
      (inside the chat template's user message when it is used).
    chat_template: wrap the prompt in the tokenizer's chat template as one
      user message (with ``system`` as a system message), the generation
      prompt included.
    system: the system message (``chat_template`` only).
    add_bos: start prompts with the tokenizer's BOS where it has one and the
      prefix does not already.
    pad_id: the id that pads prompts and answers (never a real prompt or
      answer token); default the tokenizer's PAD unless that is an EOS id
      or could occur in a prompt, else the highest id that cannot.
    max_context: the model's context length, to check prompt + answer fit.

  Raises:
    ValueError: a task symbol with no single token, a tokenizer without EOS,
      prompts and answers longer than ``max_context``, a bad ``pad_id``.
  """
  if system is not None and not chat_template:
    raise ValueError("system= is a chat-template message; pass "
                     "chat_template=True or put the text in prefix=.")
  if chat_template:
    messages = ([{"role": "system", "content": system}] if system is not None
                else []) + [{"role": "user", "content": _PLACEHOLDER}]
    rendered = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False)
    if rendered.count(_PLACEHOLDER) != 1:
      raise ValueError("The chat template did not render the user message "
                       f"verbatim once: {rendered!r}.")
    head, tail = rendered.split(_PLACEHOLDER)
    prefix, suffix = head + prefix, suffix + tail
  return TextTask(task, tokenizer, prefix=prefix, suffix=suffix,
                  add_bos=add_bos, pad_id=pad_id, max_context=max_context)
