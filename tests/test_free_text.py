"""Free-text tasks over a real tokenizer, scored on the host; search with and
without the answer key."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
import tsearch
from models import hf
from tsearch.tasks.free_text import FreeTextTask, TextProblem, prompt_hash

QWEN2 = os.path.join(os.path.dirname(__file__), "goldens", "qwen2")
PROBLEMS = {
    "train": [TextProblem(question="What is 2 + 3?", answer="5",
                          solution="2 + 3 = 5\n#### 5")],
    "test": [TextProblem(question="What is 4 + 4?", answer="8",
                         solution="4 + 4 = 8\n#### 8"),
             TextProblem(question="What is 1 + 6?", answer="7",
                         solution="1 + 6 = 7\n#### 7")],
}


def _score(calls):
  def score(text, gold):
    calls.append(text)
    if text == "boom":
      raise ValueError("unparsable")
    return float("####" in text and text.split("####")[-1].strip() == gold)
  return score


@pytest.fixture(scope="module")
def setup():
  tok = models.Tokenizer.from_dir(QWEN2)
  calls = []
  task = FreeTextTask(name="toy", tokenizer=tok, problems=PROBLEMS,
                      score_fn=_score(calls), max_prompt_length=24,
                      max_answer_length=16, vocab_size=768)
  return task, calls


def test_host_scorer_reads_each_prompts_own_reference(setup):
  task, calls = setup
  prompts, lengths = task.encode_prompts(task.eval_problems(2))
  assert (lengths > 3).all() and (prompts[:, 0] != task.pad_id).all()
  gold = np.stack([task.encode_answer(p.solution)
                   for p in task.eval_problems(2)])
  np.testing.assert_array_equal(jax.jit(task.verify)(prompts, gold), [1, 1])
  swapped = gold[::-1]  # each row answers the other problem
  np.testing.assert_array_equal(task.verify(prompts, swapped), [0, 0])
  no_eos = np.stack([task.encode_answer(p.solution, eos=False)
                     for p in task.eval_problems(2)])
  np.testing.assert_array_equal(task.verify(prompts, no_eos), [0, 0])
  n = len(calls)
  boom = np.stack([task.encode_answer("boom")] * 2)
  np.testing.assert_array_equal(task.verify(prompts, boom), [0, 0])
  assert len(calls) == n + 2  # called, raised, scored 0
  # The device hash is the host's.
  state = task.init_state(jnp.asarray(prompts))
  np.testing.assert_array_equal(np.asarray(state.key), prompt_hash(prompts))


def test_an_answer_longer_than_max_answer_length_is_an_error(setup):
  task, _ = setup
  fits = "4 + 4 = 8\n#### 8"
  row = task.encode_answer(fits)
  ids = task.encode(fits) + [task.eos_id]
  np.testing.assert_array_equal(row[:len(ids)], ids)
  assert (row[len(ids):] == task.pad_id).all() and row.shape == (16,)
  with pytest.raises(ValueError, match="needs .* tokens but max_answer_length=16"):
    task.encode_answer(" ".join(["4 + 4 = 8"] * 8))


def test_steps_end_at_the_delimiter_text(setup):
  task, _ = setup
  prompts, _ = task.encode_prompts(task.eval_problems(1))
  ids = task.encode("4 + 4 = 8\n#### 8")
  state = task.init_state(jnp.asarray(prompts))
  ends = []
  for t in ids:
    state = task.step(state, jnp.asarray([t]))
    ends.append(bool(task.step_ended(state, jnp.asarray([t]))[0]))
  text_so_far = [task.decode(ids[:i + 1]) for i in range(len(ids))]
  want = [s.endswith("\n") or ("\n" in s and "\n" not in text_so_far[i - 1])
          for i, s in enumerate(text_so_far)]
  assert ends == want and sum(ends) == 1


def test_prompt_longer_than_max_prompt_length(setup):
  task, _ = setup
  with pytest.raises(ValueError, match="max_prompt_length=24"):
    task.encode_prompts([TextProblem(question="many words " * 30, answer="1")])


def _searchable(task):
  """The golden Qwen2 with a random value head (values inside (-1, 1),
  none exactly 0 or 1), split for the search, and two prompts."""
  cfg, params = hf.load(QWEN2, max_seq_len=64)
  params["value_head"]["kernel"] = jax.random.normal(
      jax.random.key(0), params["value_head"]["kernel"].shape) * 0.5
  g, st = nnx.split(hf.to_model(cfg, params))
  prompts, lengths = task.encode_prompts(task.eval_problems(2))
  return g, st, prompts, lengths


@pytest.mark.parametrize("verifier", [True, False])
def test_search_without_the_answer_key_never_calls_the_checker(setup,
                                                               verifier):
  task, calls = setup
  g, st, prompts, lengths = _searchable(task)
  # Hot sampling of 6-token steps with EOS likely: answers end in the tree.
  config = tsearch.LMSearchConfig(
      mode="step", step_length=6, num_simulations=6, num_children=3,
      max_depth=3, verifier_in_search=verifier, step_temperature=2.0)
  n = len(calls)
  out = tsearch.lm_search(g, st, task, jnp.asarray(prompts),
                          jnp.asarray(lengths), jax.random.key(1),
                          config=config)
  jax.block_until_ready(out)
  t = out.search_tree
  assert (len(calls) > n) == verifier
  # Rewards on the edges into terminal nodes: the checker's 0/1 with the
  # answer key, the value head's estimate without it.
  term = np.asarray(t.node_terminal)
  par, slot = np.asarray(t.parents), np.asarray(t.action_from_parent)
  rewards = [float(t.children_rewards[b, par[b, n], slot[b, n]])
             for b, n in zip(*np.nonzero(term))]
  assert rewards  # hot sampling ends some answers inside the tree
  if verifier:
    assert set(rewards) <= {0.0, 1.0}
  else:
    assert np.asarray(t.embeddings["child_reward"]).max() == 0.0
    assert all(0 < abs(r) < 1 for r in rewards)
  with pytest.raises(ValueError, match="mode='step'"):
    tsearch.LMSearchConfig(verifier_in_search=False, terminal_lookahead=True)


def test_without_the_answer_key_the_value_head_judges_sampled_steps(setup):
  # verifier_in_search=False with terminal_lookahead: a sampled step that
  # ends the answer is scored by the value head at its last token, read in
  # the decode that samples it; the same step, once visited, earns the same
  # value from its own expansion. The checker is never called.
  task, calls = setup
  g, st, prompts, lengths = _searchable(task)
  trees = {}
  for judge in (False, True):
    config = tsearch.LMSearchConfig(
        mode="step", step_length=6, num_simulations=8, num_children=3,
        max_depth=3, verifier_in_search=False, step_temperature=2.0,
        terminal_lookahead=judge, capacity=12)
    n = len(calls)
    out = tsearch.lm_search(g, st, task, jnp.asarray(prompts),
                            jnp.asarray(lengths), jax.random.key(1),
                            config=config)
    assert len(calls) == n
    trees[judge] = out.search_tree
  plain, t = trees[False], trees[True]
  # The same candidate steps at the root (the extra forward samples nothing).
  np.testing.assert_array_equal(plain.children_actions[:, 0],
                                t.children_actions[:, 0])
  term = np.asarray(t.embeddings["child_terminal"])
  judged = np.asarray(t.embeddings["child_reward"])
  assert term.any() and np.all(judged[~term] == 0.0)
  assert np.all(np.asarray(plain.embeddings["child_reward"]) == 0.0)
  # Each visited terminal slot: its node's reward (the value head at the
  # expansion) equals the slot's judged score.
  kids = np.asarray(t.children_index)
  node_term = np.asarray(t.node_terminal)
  checked = 0
  for b, n, k in zip(*np.nonzero(term & (kids >= 0))):
    assert node_term[b, kids[b, n, k]]
    np.testing.assert_allclose(judged[b, n, k],
                               t.children_rewards[b, n, k], atol=1e-4)
    checked += 1
  assert checked
  # One more forward position per expansion than without the judge.
  assert np.all(np.asarray(t.embeddings["model_calls"])[:, 0]
                == np.asarray(plain.embeddings["model_calls"])[:, 0] + 1)


def _final(text):
  return text.split("####")[-1].strip() if "####" in text else None


def test_majority_voting_compares_final_answers_not_words():
  from tsearch._src.algorithms import family
  tok = models.Tokenizer.from_dir(QWEN2)
  task = FreeTextTask(name="vote", tokenizer=tok, problems=PROBLEMS,
                      score_fn=_score([]), max_prompt_length=24,
                      max_answer_length=16, vocab_size=768, answer_fn=_final)
  prompts, _ = task.encode_prompts(task.eval_problems(1) * 4)
  texts = ["so 8\n#### 8", "other words\n#### 8", "#### 9", "no answer"]
  answers = np.stack([task.encode_answer(t) for t in texts])
  ids = np.asarray(task.answer_ids(task.run(prompts, answers)))
  assert ids[0] == ids[1] != ids[2] and ids[2] >= 0 and ids[3] == -1
  # One candidate per row of the batch: [B=1, M=4].
  cand = jnp.asarray(answers)[None]
  values = jnp.asarray([[0.0, 0.0, 0.9, 0.5]])
  done = jnp.ones((1, 4), bool)
  pick = lambda how, a: int(family.choose(  # noqa: E731
      cand, None, values, done, aggregate=how, answer_ids=a)[0])
  assert pick("majority", jnp.asarray(ids)[None]) == 0  # "8" twice
  assert pick("majority", None) == 0  # all differ token-wise: lowest index
  assert pick("best_value", jnp.asarray(ids)[None]) == 2
  # weighted: values are reward estimates; "8" has 0 + 0, "9" 0.9, "none"
  # 0.5 (mapped from the head's (-1, 1) range "8" would have 1.0 and win).
  assert pick("weighted", jnp.asarray(ids)[None]) == 2
  # The family's best_of_n votes over the task's answer ids.
  cfg, params = hf.load(QWEN2, max_seq_len=48)
  g, st = nnx.split(hf.to_model(cfg, params))
  prompts, lengths = task.encode_prompts(task.eval_problems(2))
  out = tsearch.get_algorithm("best_of_n")(
      g, st, task, jnp.asarray(prompts), jnp.asarray(lengths),
      jax.random.key(0), budget=4, aggregate="majority")
  for b in range(2):
    c = np.asarray(out.candidates[b])
    ids = np.asarray(task.answer_ids(task.run(
        np.repeat(prompts[b:b + 1], 4, 0), c)))
    want = int(family.choose(
        jnp.asarray(c)[None], None, out.candidate_scores[b:b + 1],
        out.candidate_finished[b:b + 1], aggregate="majority",
        answer_ids=jnp.asarray(ids)[None])[0])
    np.testing.assert_array_equal(out.answers[b], c[want])
