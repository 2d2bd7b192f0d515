"""Tasks whose answers are free text over a real tokenizer, scored on the host.

Math word problems (GSM8K, MATH) are answered in natural language: no grammar
constrains the tokens, and the answer checker (extract the final answer,
compare it exactly) is Python, not ``jnp``. :class:`FreeTextTask` is a full
:class:`tsearch.tasks.Task` over a real tokenizer's vocabulary whose
``reward`` calls the checker through ``jax.pure_callback``, so searches,
decoders and the training step use it inside ``jit`` and ``shard_map`` like
any other task.

* **Which problem?** ``init_state`` sees only prompt tokens. Each prompt's
  tokens are hashed (two 32-bit polynomial hashes, on device and, identically,
  on the host when :meth:`FreeTextTask.encode_prompts` makes them); the host
  keeps ``hash -> reference answer``, so the callback scores each answer
  against its own problem's reference.
* **Steps** end where the step delimiter's text (``"\\n"`` for GSM8K's
  one-line steps) is written, detected on token ids by a
  :class:`tsearch.tasks.text.DelimiterMatcher` without re-tokenising.
* **Answers** end at any of the tokenizer's EOS ids or after
  ``max_answer_length`` tokens (a truncated answer scores 0).

Example::

  tok = models.Tokenizer.from_dir("tests/goldens/qwen2")
  problems = {"test": [TextProblem(question="1 + 1?", answer="2")]}
  task = FreeTextTask(name="toy", tokenizer=tok, problems=problems,
                      score_fn=lambda text, gold: float(text.strip() == gold),
                      max_prompt_length=32, max_answer_length=16)
  prompts, lengths = task.encode_prompts(task.eval_problems(1))
  answer = task.encode_answer("2")
  task.verify(prompts, answer[None])   # [1.0], scored on the host

Scoring without an answer key (``verifier_in_search=false``) is a search
option, not a task option: see ``tsearch.LMSearchConfig.terminal_value``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import threading
from typing import Any, Callable, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tsearch.tasks import base
from tsearch.tasks.text import DelimiterMatcher, TextVocabulary, TokenizerLike
from tsearch.tasks.text import encode_answer as _encode_answer

Array = chex.Array
_MULTIPLIERS = (np.uint32(1_000_003), np.uint32(2_654_435_761))
# prompt hash -> reference answer, per task identity: equal tasks (which jit
# treats as one static argument, so one callback) share it.
_GOLD: dict[tuple, dict[tuple[int, int], str]] = {}
_GOLD_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class TextProblem:
  """A problem in words: the question, its reference final answer and,
  where known, a reference solution (the training target)."""
  question: str
  answer: str
  solution: str | None = None


@chex.dataclass(frozen=True)
class FreeTextState:
  tokens: Array  # [B, T] int32 answer tokens, PAD after ``length``
  length: Array  # [B] int32
  valid: Array  # [B] bool (always True: every token is allowed)
  done: Array  # [B] bool, an EOS id was written
  key: Array  # [B, 2] uint32 hash of the prompt tokens
  matcher: Array  # [B] int32 DelimiterMatcher state
  step_end: Array  # [B] bool, the last token completed the step delimiter


def prompt_hash(prompt_tokens) -> np.ndarray:
  """``[B, 2]`` uint32 hashes of ``[B, P]`` prompt tokens (host side)."""
  p = np.asarray(prompt_tokens).astype(np.uint32)
  out = np.zeros((p.shape[0], 2), np.uint32)
  with np.errstate(over="ignore"):
    for j, m in enumerate(_MULTIPLIERS):
      h = np.zeros((p.shape[0],), np.uint32)
      for col in p.T:
        h = h * m + col + np.uint32(1)
      out[:, j] = h
  return out


def _prompt_hash_device(prompt_tokens: Array) -> Array:
  p = prompt_tokens.astype(jnp.uint32)

  def one(m):
    def body(h, col):
      return h * jnp.uint32(m) + col + jnp.uint32(1), None
    return jax.lax.scan(body, jnp.zeros(p.shape[:1], jnp.uint32), p.T)[0]

  return jnp.stack([one(int(m)) for m in _MULTIPLIERS], axis=-1)


class FreeTextTask(base.Task):
  """Free-text answers over a real tokenizer, scored by a host function.

  Args:
    name: the task's name (results rows, logs).
    tokenizer: a :class:`models.Tokenizer` (``encode``, ``decode``,
      ``eos_ids``, ``bos_id``, ``pad_id``, ``vocab_size``, ``token_bytes``,
      ``apply_chat_template``).
    problems: ``{split: [TextProblem, ...]}``; ``train`` is sampled from,
      the others are read in order by ``eval_problems``.
    score_fn: ``(answer_text, reference_answer) -> float`` in [0, 1]; pure
      Python, called on the host. It must not raise on unparsable text
      (an exception is scored 0 and logged once).
    max_prompt_length, max_answer_length: ``P`` and ``T`` in tokens.
    step_delimiter: the text that ends a reasoning step.
    prompt_fn: ``problem -> str`` (the prompt's text) or ``problem -> list
      of chat messages`` (rendered with the tokenizer's chat template and a
      generation prompt). Default: the question.
    vocab_size: the model's embedding rows, if more than the tokenizer's.
    answer_fn: ``answer_text -> canonical final answer or None``, for
      majority voting over final answers (:meth:`answer_ids`); it reads
      only the candidate's text, never the reference. None: candidates are
      compared token by token.
  """
  fixed_splits = True

  def __init__(self, *, name: str, tokenizer: TokenizerLike,
               problems: Mapping[str, Sequence[TextProblem]],
               score_fn: Callable[[str, str], float],
               max_prompt_length: int, max_answer_length: int,
               step_delimiter: str = "\n",
               prompt_fn: Callable[[TextProblem], Any] | None = None,
               vocab_size: int | None = None,
               answer_fn: Callable[[str], str | None] | None = None):
    eos_ids = tuple(int(i) for i in (tokenizer.eos_ids or ()))
    if not eos_ids:
      raise ValueError("The tokenizer has no EOS token (eos_ids is empty); "
                       "free-text answers need one to end.")
    if "train" not in problems:
      raise ValueError(f"problems needs a 'train' split; got {sorted(problems)}.")
    v = int(vocab_size or tokenizer.vocab_size)
    if v < tokenizer.vocab_size:
      raise ValueError(f"vocab_size={v} is smaller than the tokenizer's "
                       f"{tokenizer.vocab_size} ids.")
    self.name = name
    self.tokenizer = tokenizer
    self.problems = {k: list(x) for k, x in problems.items()}
    self.extra_splits = tuple(k for k in self.problems
                              if k not in ("train", "validation", "test"))
    self.score_fn = score_fn
    self.answer_fn = answer_fn
    self.prompt_fn = prompt_fn or (lambda p: p.question)
    self.max_prompt_length = int(max_prompt_length)
    self.max_answer_length = int(max_answer_length)
    self.vocab = TextVocabulary(size=v)
    self.eos_ids = eos_ids
    self.eos_id = eos_ids[0]
    bos = tokenizer.bos_id
    self.bos_id = int(bos) if bos is not None else self.eos_id
    pad = tokenizer.pad_id
    self.pad_id = int(pad) if pad is not None and pad not in eos_ids else (
        v - 1 if v > tokenizer.vocab_size else self.eos_id)
    self.matcher = DelimiterMatcher.build(tokenizer.token_bytes(v),
                                          step_delimiter)
    self.step_delimiter = -1  # steps end by text: see step_ended
    self.delimiter_text = step_delimiter
    self._eos = np.zeros((v,), bool)
    self._eos[list(eos_ids)] = True
    allowed = np.ones((v,), bool)
    allowed[tokenizer.vocab_size:] = False  # rows no token maps to
    if pad is not None and pad not in eos_ids:
      allowed[int(pad)] = False
    if bos is not None and bos not in eos_ids:
      allowed[int(bos)] = False
    self._allowed = allowed
    self._warned = False
    digest = hashlib.sha256(b"".join(tokenizer.token_bytes(v)))
    digest.update(repr((eos_ids, step_delimiter, v)).encode())
    self._identity = (name, digest.hexdigest(), self.max_prompt_length,
                      self.max_answer_length, id(score_fn), id(self.problems),
                      id(answer_fn))

  # ---------------------------------------------------------------- host
  def options(self) -> dict:
    return dict(name=self.name, max_prompt_length=self.max_prompt_length,
                max_answer_length=self.max_answer_length)

  def __hash__(self):
    return hash((type(self), self._identity))

  def __eq__(self, other):
    return type(self) is type(other) and self._identity == other._identity

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False)

  def decode(self, ids) -> str:
    ids = [int(i) for i in ids if 0 <= int(i) < self.tokenizer.vocab_size]
    return self.tokenizer.decode(ids, skip_special_tokens=True)

  def prompt_text(self, problem: TextProblem) -> str:
    made = self.prompt_fn(problem)
    if isinstance(made, str):
      return made
    return self.tokenizer.apply_chat_template(made, add_generation_prompt=True)

  def solution_text(self, problem: TextProblem) -> str:
    if problem.solution is None:
      raise ValueError(f"Problem {problem.question[:40]!r} has no reference "
                       "solution.")
    return problem.solution

  def sample_problems(self, seed: int, num: int, split: str = "train") -> list:
    pool = self.problems[split]
    idx = np.random.default_rng(seed).choice(len(pool), num,
                                             replace=num > len(pool))
    return [pool[i] for i in idx]

  def eval_problems(self, num: int, *, split: str = "test") -> list:
    self.check_split(split)
    if split not in self.problems:
      raise ValueError(f"Task {self.name!r} has no {split!r} problems; it has "
                       f"{sorted(self.problems)}.")
    return self.problems[split][:num]

  def _prompt_ids(self, problem: TextProblem) -> list[int]:
    made = self.prompt_fn(problem)
    if isinstance(made, str):
      ids = self.tokenizer.encode(made, add_special_tokens=True)
    else:  # the chat template writes its own special tokens
      ids = self.tokenizer.encode(self.tokenizer.apply_chat_template(
          made, add_generation_prompt=True), add_special_tokens=False)
    if len(ids) > self.max_prompt_length:
      raise ValueError(
          f"A prompt of task {self.name!r} needs {len(ids)} tokens but "
          f"max_prompt_length={self.max_prompt_length} (the model's context "
          "must hold prompt + answer); raise it or shorten the prompt.")
    return ids

  def encode_prompt(self, problem: TextProblem) -> np.ndarray:
    ids = self._prompt_ids(problem)
    out = np.full((self.max_prompt_length,), self.pad_id, np.int32)
    out[:len(ids)] = ids
    return out

  def encode_prompts(self, problems: Sequence[TextProblem]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Prompt tokens ``[B, P]`` and lengths ``[B]``; registers each prompt's
    reference answer for the host scorer."""
    ids = [self._prompt_ids(p) for p in problems]
    tokens = np.full((len(ids), self.max_prompt_length), self.pad_id, np.int32)
    for row, x in zip(tokens, ids):
      row[:len(x)] = x
    with _GOLD_LOCK:
      gold = _GOLD.setdefault(self._identity, {})
      for key, p in zip(prompt_hash(tokens), problems):
        gold[(int(key[0]), int(key[1]))] = p.answer
    return tokens, np.array([len(x) for x in ids], np.int32)

  def encode_answer(self, text: str, *, eos: bool = True) -> np.ndarray:
    return _encode_answer(self, text, eos=eos)

  def _score_host(self, key, tokens, length, done) -> np.ndarray:
    key, tokens = np.asarray(key), np.asarray(tokens)
    length, done = np.asarray(length), np.asarray(done)
    lead = done.shape
    key = key.reshape(-1, 2)
    tokens = tokens.reshape(-1, tokens.shape[-1])
    out = np.zeros((key.shape[0],), np.float32)
    for i, (k, t, n, d) in enumerate(zip(key, tokens, length.ravel(),
                                         done.ravel())):
      if not d:
        continue
      gold = _GOLD.get(self._identity, {}).get((int(k[0]), int(k[1])))
      if gold is None:
        raise KeyError("An answer's prompt was not made by this task's "
                       "encode_prompts, so its reference answer is unknown.")
      text = self.decode(t[:max(int(n) - 1, 0)])  # without the EOS
      try:
        out[i] = float(self.score_fn(text, gold))
      except Exception as e:  # noqa: BLE001  (a checker must never crash)
        if not self._warned:
          self._warned = True
          print(f"{self.name}: the answer checker raised {e!r}; scored 0.")
    return out.reshape(lead)

  # -------------------------------------------------------------- device
  def init_state(self, prompt_tokens: Array) -> FreeTextState:
    prompt = self._check_prompt(prompt_tokens)
    b = prompt.shape[0]
    return FreeTextState(
        tokens=jnp.full((b, self.max_answer_length), self.pad_id, jnp.int32),
        length=jnp.zeros((b,), jnp.int32), valid=jnp.ones((b,), bool),
        done=jnp.zeros((b,), bool), key=_prompt_hash_device(prompt),
        matcher=self.matcher.init(b), step_end=jnp.zeros((b,), bool))

  def legal_mask(self, state) -> Array:
    b = state.length.shape[0]
    mask = jnp.broadcast_to(jnp.asarray(self._allowed), (b, self.vocab.size))
    pad_only = jax.nn.one_hot(self.pad_id, self.vocab.size, dtype=bool)
    return jnp.where(self.is_terminal(state)[:, None], pad_only[None], mask)

  def step(self, state, token: Array) -> FreeTextState:
    token = jnp.asarray(token, jnp.int32)
    chex.assert_shape(token, state.length.shape)
    active = ~self.is_terminal(state)
    in_vocab = (token >= 0) & (token < self.vocab.size)
    safe = jnp.where(in_vocab, token, 0)
    matcher, ended = self.matcher.update(state.matcher, token)
    rows = jnp.arange(token.shape[0])
    pos = jnp.minimum(state.length, self.max_answer_length - 1)
    new = state.replace(
        tokens=state.tokens.at[rows, pos].set(token),
        length=state.length + 1,
        done=in_vocab & jnp.asarray(self._eos)[safe],
        matcher=matcher, step_end=ended)
    return base.select_rows(active, new, state)

  def step_ended(self, state, token: Array) -> Array:
    del token
    return state.step_end

  def reward(self, state) -> Array:
    """``[B]`` float32 from the host checker (0 where not finished by EOS)."""
    out = jax.ShapeDtypeStruct(state.done.shape, jnp.float32)
    return jax.pure_callback(self._score_host, out, state.key, state.tokens,
                             state.length, state.done,
                             vmap_method="expand_dims")

  def _answer_ids_host(self, tokens, length) -> np.ndarray:
    tokens, length = np.asarray(tokens), np.asarray(length)
    lead = length.shape
    tokens = tokens.reshape(-1, tokens.shape[-1])
    out = np.full((tokens.shape[0],), -1, np.int32)
    for i, (t, n) in enumerate(zip(tokens, length.ravel())):
      t = t[:int(n)]
      t = t[~np.isin(t, self.eos_ids)]
      try:
        ans = self.answer_fn(self.decode(t))
      except Exception:  # noqa: BLE001  (no final answer)
        ans = None
      if ans is not None:
        digest = hashlib.blake2b(str(ans).encode(), digest_size=4).digest()
        out[i] = int.from_bytes(digest, "little") & 0x7FFFFFFF
    return out.reshape(lead)

  def answer_ids(self, state) -> Array | None:
    """``[B]`` int32 hashes of the final answers ``answer_fn`` extracts
    (host callback; -1 where there is none). None without ``answer_fn``."""
    if self.answer_fn is None:
      return None
    out = jax.ShapeDtypeStruct(state.length.shape, jnp.int32)
    return jax.pure_callback(self._answer_ids_host, out, state.tokens,
                             state.length, vmap_method="expand_dims")
