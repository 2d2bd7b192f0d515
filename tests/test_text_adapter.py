"""Tasks over a real tokenizer (tsearch.tasks.text): matcher, task, searches."""
import functools
import os
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from flax import nnx
from tokenizers import decoders, pre_tokenizers, trainers

import models
import tsearch
from models import hf
from tests.test_family_helpers import tiny_model
from tsearch.tasks import text

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _byte_decoder():
  """GPT-2's byte-level alphabet: printable character -> byte."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD))
        + list(range(0xAE, 0x100)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return {chr(c): b for b, c in zip(bs, cs)}


class ByteBPE:
  """A real ``tokenizers`` byte-level BPE behind ``models.Tokenizer``'s
  interface (Qwen-like: no BOS, PAD = EOS = <|endoftext|>)."""

  def __init__(self, tk, *, eos=("<|im_end|>", "<|endoftext|>"), bos=None):
    self.tk = tk
    self.vocab_size = tk.get_vocab_size()
    self.eos_ids = tuple(tk.token_to_id(e) for e in eos)
    self.bos_id = None if bos is None else tk.token_to_id(bos)
    self.pad_id = tk.token_to_id("<|endoftext|>")

  def encode(self, s, add_special_tokens=True):
    return self.tk.encode(s, add_special_tokens=add_special_tokens).ids

  def decode(self, ids):
    return self.tk.decode(list(ids), skip_special_tokens=False)

  def apply_chat_template(self, messages, add_generation_prompt=False,
                          tokenize=False):
    assert not tokenize
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                  for m in messages)
    return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")

  def token_bytes(self):
    dec = _byte_decoder()
    out = []
    for i in range(self.vocab_size):
      s = self.tk.id_to_token(i)
      out.append(s.encode() if s in SPECIALS else bytes(dec[c] for c in s))
    return out


@functools.lru_cache(maxsize=None)
def _trained():
  rng = random.Random(0)
  corpus = []
  for _ in range(400):
    a, b = rng.randrange(1000), rng.randrange(1000)
    corpus.append(f"{a}+{b}={a + b}\n{a}*{b}={a * b}\n\n")
    corpus.append(f"{a} {b} {rng.randrange(100)}:{rng.randrange(999)}\n\n"
                  "The answer is here.\n\nThen more text.")
  tk = tokenizers.Tokenizer(tokenizers.models.BPE())
  tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tk.decoder = decoders.ByteLevel()
  tk.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=420, special_tokens=list(SPECIALS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  return tk


def tokenizer(**kw):
  return ByteBPE(_trained(), **kw)


# ----------------------------------------------------------------- matcher
def reference_ends(token_bytes, seq, delimiter):
  """Tokens of ``seq`` in which a (leftmost, non-overlapping) occurrence of
  ``delimiter`` in the concatenated bytes ends."""
  pat = delimiter.encode()
  stream = b"".join(token_bytes[t] for t in seq)
  ends = np.cumsum([len(token_bytes[t]) for t in seq])
  out = np.zeros(len(seq), bool)
  pos = stream.find(pat)
  while pos >= 0:
    out[np.searchsorted(ends, pos + len(pat) - 1, side="right")] = True
    pos = stream.find(pat, pos + len(pat))
  return out


def run_matcher(matcher, seqs):
  seqs = jnp.asarray(seqs, jnp.int32)

  def body(st, tok):
    st, ended = matcher.update(st, tok)
    return st, ended
  _, ended = jax.lax.scan(body, matcher.init(seqs.shape[0]), seqs.T)
  return np.asarray(ended.T)


@pytest.mark.parametrize("delimiter", ["\n\n", "\n", "aba", "\n\nThe"])
def test_matcher_equals_python_reference_on_random_sequences(delimiter):
  vocab = [b"", b"\n", b"\n\n", b"\n\nThe", b"a", b"b", b"ab", b"ba",
           b"aba", b"x\n", b"\nx", b"The", b"\n\n\n", b"h\xc3", b"\xa9"]
  m = text.DelimiterMatcher.build(vocab, delimiter)
  assert m.next_state.shape == (len(delimiter.encode()), len(vocab))
  rng = np.random.default_rng(0)
  seqs = rng.integers(0, len(vocab), (300, 12))
  got = run_matcher(m, seqs)
  want = np.stack([reference_ends(vocab, s, delimiter) for s in seqs])
  np.testing.assert_array_equal(got, want)
  assert want.any() and not want.all()


def test_matcher_split_delimiter_and_token_granularity():
  vocab = [b"x", b"\n", b"\n\nThe", b"\n\n"]
  m = text.DelimiterMatcher.build(vocab, "\n\n")
  # "\n" + "\n": the delimiter split across tokens ends at the second one.
  np.testing.assert_array_equal(run_matcher(m, [[1, 1, 0, 1, 0, 1]]),
                                [[False, True, False, False, False, False]])
  # Inside a longer token: the step ends after "\n\nThe" as a whole.
  np.testing.assert_array_equal(run_matcher(m, [[0, 2, 0], [1, 3, 0]]),
                                [[False, True, False], [False, True, False]])
  # Occurrences in the byte stream do not overlap; a token's bytes after an
  # occurrence count towards the next: "\n|\n\n|\n" holds two.
  np.testing.assert_array_equal(run_matcher(m, [[1, 3, 1], [0, 3, 1]]),
                                [[False, True, True], [False, True, False]])
  # Ids outside the vocabulary (search padding -1) change nothing.
  np.testing.assert_array_equal(run_matcher(m, [[1, -1, 1]]),
                                [[False, False, True]])


def test_matcher_over_a_real_tokenizer():
  tb = tokenizer().token_bytes()
  m = text.DelimiterMatcher.build(tb, "\n\n")
  tk = _trained()
  s = "12+3=15\n\nThe answer is here.\n\n\nThen\n7\n\n"
  seq = tk.encode(s).ids
  assert any(tb[t] == b"\n\n" for t in seq)  # a merged delimiter token
  got = run_matcher(m, [seq])[0]
  np.testing.assert_array_equal(got, reference_ends(tb, seq, "\n\n"))
  assert got.sum() == 3
  rng = np.random.default_rng(1)
  seqs = rng.integers(0, len(tb), (200, 16))
  seqs[rng.random(seqs.shape) < 0.3] = tk.token_to_id("Ċ")  # "\n"
  np.testing.assert_array_equal(
      run_matcher(m, seqs),
      np.stack([reference_ends(tb, s, "\n\n") for s in seqs]))


# -------------------------------------------------------------- text task
ARITH = tsearch.tasks.get_task("arithmetic", max_digits=3)


@functools.lru_cache(maxsize=None)
def arith_text(**kw):
  return text.over_tokenizer(ARITH, tokenizer(), **kw)


def test_text_task_verifies_like_the_symbol_task():
  task = arith_text()
  problems = ARITH.sample_problems(seed=0, num=16)
  pt, _ = task.encode_prompts(problems)
  # Prompts hold multi-symbol tokens ("123"): the inner prompt is rebuilt.
  assert max(len(task.decode([t])) for t in pt.reshape(-1)
             if t != task.pad_id) >= 2
  inner, ok = jax.jit(task._inner_prompt)(jnp.asarray(pt))
  np.testing.assert_array_equal(inner, ARITH.encode_prompts(problems)[0])
  assert np.asarray(ok).all()
  want = ARITH.verify(*[ARITH.encode_prompts(problems)[0],
                        ARITH.solution_tokens(problems)])
  got = jax.jit(task.verify)(pt, task.solution_tokens(problems))
  np.testing.assert_array_equal(got, want)
  assert np.asarray(got).min() == 1.0
  wrong = [task.encode_answer(str(int(ARITH.solution_text(p)) + 1))
           for p in problems]
  assert np.asarray(task.verify(pt, np.stack(wrong))).max() == 0.0
  # The other EOS id ends an answer too; a multi-symbol token is invalid.
  ans = task.solution_tokens(problems)
  alt = np.where(ans == task.eos_ids[0], task.eos_ids[1], ans)
  np.testing.assert_array_equal(task.verify(pt, alt), want)
  two = _trained().token_to_id("12")
  bad = np.full_like(ans, task.pad_id)
  bad[:, 0], bad[:, 1] = two, task.eos_id
  assert np.asarray(task.verify(pt, bad)).max() == 0.0


def test_legal_masks_allow_only_mapped_tokens():
  task = arith_text()
  pt, _ = task.encode_prompts(ARITH.sample_problems(seed=1, num=3))
  digit_ids = {task.encode(str(d))[0] for d in range(10)}
  assert all(len(task.decode([i])) == 1 for i in digit_ids)
  st = task.init_state(pt)
  first = np.asarray(task.legal_mask(st))
  assert first.shape == (3, task.vocab.size)
  assert {int(i) for i in np.nonzero(first[0])[0]} == digit_ids  # no EOS yet
  st = task.step(st, jnp.full((3,), task.encode("7")[0]))
  second = {int(i) for i in np.nonzero(np.asarray(task.legal_mask(st))[0])[0]}
  assert second == digit_ids | set(task.eos_ids)
  st = task.step(st, jnp.full((3,), task.eos_ids[1]))
  done = np.asarray(task.legal_mask(st))
  assert np.asarray(task.is_terminal(st)).all()
  assert (np.nonzero(done)[1] == task.pad_id).all() and done.sum() == 3


def test_chat_template_prompt_and_hashing():
  task = arith_text(chat_template=True, system="Add.", suffix=" ")
  problems = ARITH.sample_problems(seed=2, num=4)
  pt, pl = task.encode_prompts(problems)
  assert task.decode(pt[0]) == (
      "<|im_start|>system\nAdd.<|im_end|>\n<|im_start|>user\n"
      + ARITH.prompt_text(problems[0]) + " <|im_end|>\n<|im_start|>assistant\n")
  np.testing.assert_array_equal(pl, (pt != task.pad_id).sum(-1))
  assert task.pad_id not in task.eos_ids
  np.testing.assert_array_equal(
      task.verify(pt, task.solution_tokens(problems)), np.ones(4))
  again = text.over_tokenizer(ARITH, tokenizer(), chat_template=True,
                              system="Add.", suffix=" ")
  assert again == task and hash(again) == hash(task) and again is not task
  assert arith_text() != task


def test_errors_name_what_is_wrong():
  no_eos = tokenizer()
  no_eos.eos_ids = ()
  with pytest.raises(ValueError, match="no EOS"):
    text.over_tokenizer(ARITH, no_eos)

  class NoStar(ByteBPE):
    def token_bytes(self):  # "*" only inside longer tokens
      return [b"**" if b == b"*" else b for b in super().token_bytes()]
  with pytest.raises(ValueError, match=r"single token.*\['\*'\]"):
    text.over_tokenizer(ARITH, NoStar(_trained()))
  with pytest.raises(ValueError, match="max_context=12"):
    text.over_tokenizer(ARITH, tokenizer(), prefix="Compute this sum now: ",
                        max_context=12)
  with pytest.raises(ValueError, match="chat_template=True"):
    text.over_tokenizer(ARITH, tokenizer(), system="x")


# --------------------------------------------------------------- searches
COUNTDOWN = tsearch.tasks.get_task("countdown", num_numbers=3, max_number=20,
                                   max_target=99, max_answer_length=24)


def test_lm_search_step_mode_ends_steps_at_the_delimiter():
  task = text.over_tokenizer(COUNTDOWN, tokenizer())
  delim = task.step_delimiter
  assert task.decode([delim]) == "\n" and task.matcher is not None
  problems = COUNTDOWN.sample_problems(seed=0, num=2)
  pt, pl = task.encode_prompts(problems)
  s = 10
  gd, st = tiny_model(task.vocab.size, task.max_prompt_length + 3 * s, seed=1)
  cfg = tsearch.LMSearchConfig(mode="step", num_simulations=6,
                               num_children=3, step_length=s, max_depth=3)
  out = jax.jit(functools.partial(tsearch.lm_search, config=cfg),
                static_argnums=(0, 2))(gd, st, task, pt, pl,
                                       jax.random.key(0))
  tree = jax.device_get(out.search_tree)
  acts = tree.children_actions[tree.children_index >= 0]
  assert len(acts) >= 4
  ended_by_delim = 0
  for a in acts:
    a = [int(x) for x in a if x >= 0]
    assert delim not in a[:-1] and task.eos_id not in a[:-1]
    assert len(a) == s or a[-1] in (delim,) + task.eos_ids
    ended_by_delim += a[-1] == delim and len(a) < s
    assert set(task.decode(a)) <= set("0123456789+-*/=\n<|>endoftxim_")
  assert ended_by_delim >= 1


def test_lm_search_token_mode_over_text_task():
  task = arith_text()
  problems = ARITH.sample_problems(seed=3, num=2)
  pt, pl = task.encode_prompts(problems)
  gd, st = tiny_model(task.vocab.size,
                      task.max_prompt_length + task.max_answer_length)
  cfg = tsearch.LMSearchConfig(mode="token", num_simulations=8,
                               num_children=4, max_depth=4)
  out = tsearch.lm_search(gd, st, task, pt, pl, jax.random.key(0), config=cfg)
  tree = jax.device_get(out.search_tree)
  legal_first = np.asarray(task.legal_mask(task.init_state(pt)))
  root_kids = tree.children_actions[:, 0, :, 0]
  for b in range(2):
    used = root_kids[b][tree.children_index[b, 0] >= 0]
    assert len(used) >= 2 and legal_first[b, used].all()


def test_greedy_over_text_task_is_argmax_of_full_forwards():
  task = arith_text()
  problems = ARITH.sample_problems(seed=4, num=3)
  pt, pl = task.encode_prompts(problems)
  t = task.max_answer_length
  gd, st = tiny_model(task.vocab.size, task.max_prompt_length + t, seed=2)
  out = jax.device_get(tsearch.get_algorithm("greedy")(
      gd, st, task, pt, pl, jax.random.key(0)))
  fwd = jax.jit(models.forward, static_argnums=0)
  width = pt.shape[1] + t
  for b in range(len(pl)):
    seq, state = list(pt[b, :pl[b]]), task.init_state(pt[b:b + 1])
    while not bool(task.is_terminal(state)[0]):
      x = jnp.array([seq + [task.pad_id] * (width - len(seq))])
      o = fwd(gd, st, x, jnp.arange(width)[None])
      tok = int(jnp.argmax(jnp.where(task.legal_mask(state)[0],
                                     o.logits[0, len(seq) - 1], -jnp.inf)))
      seq.append(tok)
      state = task.step(state, jnp.array([tok]))
    ans = seq[pl[b]:]
    np.testing.assert_array_equal(out.answers[b, :len(ans)], ans)
    assert int(out.answer_lengths[b]) == len(ans)
    # Digits then an EOS id, and the symbol task scores the text the same.
    assert ans[-1] in task.eos_ids and task.decode(ans[:-1]).isdigit()
    np.testing.assert_array_equal(
        task.verify(pt[b:b + 1], out.answers[b:b + 1]),
        ARITH.verify(ARITH.encode_prompts(problems[b:b + 1])[0],
                     ARITH.encode_answer(task.decode(ans[:-1]))[None]))


def test_best_of_n_over_text_task():
  task = arith_text()
  problems = ARITH.sample_problems(seed=4, num=3)
  pt, pl = task.encode_prompts(problems)
  gd, st = tiny_model(task.vocab.size,
                      task.max_prompt_length + task.max_answer_length, seed=2)
  out = jax.device_get(tsearch.get_algorithm("best_of_n")(
      gd, st, task, pt, pl, jax.random.key(0), budget=4, temperature=2.0))
  cands = out.candidates.reshape(-1, task.max_answer_length)
  assert out.candidate_finished.all()
  for c, n in zip(cands, out.candidate_lengths.reshape(-1)):
    assert c[n - 1] in task.eos_ids and task.decode(c[:n - 1]).isdigit()
    assert (c[n:] == task.pad_id).all()
  assert len({tuple(c) for c in cands}) > 4


def test_text_task_step_ended_follows_the_delimiter_text():
  task = text.over_tokenizer(COUNTDOWN, tokenizer())
  problems = COUNTDOWN.sample_problems(seed=0, num=2)
  pt, _ = task.encode_prompts(problems)
  ans = task.solution_tokens(problems)
  state, ended = task.init_state(pt), []
  for j in range(ans.shape[1]):
    state = task.step(state, jnp.asarray(ans[:, j]))
    ended.append(np.asarray(tsearch._src.base.step_ended(task, state,
                                                         ans[:, j])))
  ended = np.stack(ended, 1)
  live = ans != task.pad_id
  np.testing.assert_array_equal(ended & live, ans == task.step_delimiter)
  assert ended[live].sum() == 2  # 3 numbers: 2 steps, the first ends in "\n"
  np.testing.assert_array_equal(task.reward(state), [1.0, 1.0])
  # The delimiter's text inside another token ends the step too (found on
  # bytes, not by the id); the token is not a task symbol: invalid answer.
  two = _trained().token_to_id("ĊĊ")  # "\n\n"
  state = task.init_state(pt)
  state = task.step(state, jnp.asarray([task.encode("1")[0], two]))
  np.testing.assert_array_equal(task.step_ended(state, None), [False, True])
  np.testing.assert_array_equal(state.valid, [True, False])


# ---------------------------------------------- a real checkpoint's files
GOLDENS = os.path.join(os.path.dirname(__file__), "goldens")


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "gemma3"])
def test_over_golden_tokenizers(family):
  tok = models.Tokenizer.from_dir(os.path.join(GOLDENS, family))
  for inner in (ARITH, COUNTDOWN):
    task = text.over_tokenizer(inner, tok, chat_template=True,
                               system="Solve it.")
    problems = inner.sample_problems(seed=5, num=6)
    pt, pl = task.encode_prompts(problems)
    rendered = task.decode(pt[0, :pl[0]])
    assert inner.prompt_text(problems[0]) in rendered
    assert "Solve it." in rendered
    assert task.pad_id not in task.eos_ids and task.pad_id not in pt[0, :pl[0]]
    answers = task.solution_tokens(problems)
    np.testing.assert_array_equal(jax.jit(task.verify)(pt, answers),
                                  np.ones(6))
    assert task.decode(answers[0]).startswith(inner.solution_text(problems[0]))


def test_qwen2_checkpoint_searches_a_text_task():
  path = os.path.join(GOLDENS, "qwen2")
  task = text.over_tokenizer(COUNTDOWN, models.Tokenizer.from_dir(path),
                             chat_template=True)
  cfg, params = hf.load(path)
  gd, st = nnx.split(hf.to_model(cfg, params))
  assert cfg.vocab_size > task.vocab.size  # padded embedding rows
  problems = COUNTDOWN.sample_problems(seed=1, num=2)
  pt, pl = task.encode_prompts(problems)
  out = jax.device_get(tsearch.get_algorithm("greedy")(
      gd, st, task, pt, pl, jax.random.key(0)))
  for a, n in zip(out.answers, out.answer_lengths):  # legal tokens only
    assert set(task.decode(a[:n])) <= set("0123456789+-*/=\n") | set(
        task.decode(list(task.eos_ids)))
  s = 8
  search = tsearch.LMSearchConfig(mode="step", num_simulations=4,
                                  num_children=2, step_length=s, max_depth=2)
  res = tsearch.lm_search(gd, st, task, pt, pl, jax.random.key(1),
                          config=search)
  tree = jax.device_get(res.search_tree)
  for a in tree.children_actions[tree.children_index >= 0]:
    a = [int(x) for x in a if x >= 0]
    assert task.step_delimiter not in a[:-1]
    assert len(a) == s or a[-1] == task.step_delimiter or a[-1] in task.eos_ids
