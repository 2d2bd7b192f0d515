"""Sample-and-learn (search.method='sample'): rows built from N samples per
prompt carry the verifier's reward, SFT only on verified answers, and a run
trains, logs its terms and resumes exactly."""
import jax
import numpy as np
import pytest

from train import config as config_lib
from train import loop
from train import metrics as metrics_lib
from train import model as model_lib
from train import sample_learn
import models
from tsearch.tasks import get_task
from tests import test_train_search as train_search_tests


def _rows(task, key, n=6, **kw):
  cfg = models.ModelConfig(vocab_size=task.vocab.size, num_layers=1,
                           d_model=16, num_heads=2, num_kv_heads=1,
                           head_dim=8, mlp_dim=32, max_seq_len=48)
  fns, params = model_lib.create_model(cfg, seed=0)
  prompt, plen = task.encode_prompts(task.sample_problems(0, 5))
  rows, stats = jax.jit(
      lambda p, k: sample_learn.sample_rows(
          fns.graphdef, fns.state(p), task, prompt, plen, k, num_samples=n,
          temperature=1.0, **kw))(params, key)
  return prompt, plen, jax.device_get(rows), jax.device_get(stats)


def test_sample_rows_hold_each_sample_and_its_reward():
  task = get_task("arithmetic", max_digits=1)
  n = 6
  prompt, plen, rows, stats = _rows(task, jax.random.key(3), n)
  b, p = prompt.shape
  assert rows["tokens"].shape == (b * n, p + task.max_answer_length)
  answers = np.full((b * n, task.max_answer_length), task.pad_id, np.int32)
  for r in range(b * n):
    pl = int(plen[r // n])
    np.testing.assert_array_equal(rows["tokens"][r, :pl],
                                  prompt[r // n, :pl])
    body = rows["loss_mask"][r] > 0
    al = int(body.sum())
    assert al >= 1 and np.all(np.flatnonzero(body) == pl + np.arange(al))
    assert rows["token_mask"][r].sum() == pl + al
    # The value is regressed from the prompt's last token to the answer's.
    assert np.flatnonzero(rows["value_mask"][r]).tolist() == list(
        range(pl - 1, pl + al))
    answers[r, :al] = rows["tokens"][r, pl:pl + al]
  # The reward is the verifier's on the answer as written in the row.
  reward = np.asarray(task.verify(np.repeat(prompt, n, 0), answers))
  np.testing.assert_array_equal(rows["value_target"], reward)
  np.testing.assert_array_equal(rows["policy_weight"], reward > 0.5)
  np.testing.assert_allclose(stats["search/solve_rate"], reward.mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(
      stats["search/pass_at_n"], (reward.reshape(b, n) > 0.5).any(1).mean(),
      rtol=1e-6)
  # Samples differ across the N of a prompt and repeat under the same key.
  assert len({rows["tokens"][r].tobytes() for r in range(n)}) > 1
  _, _, again, _ = _rows(task, jax.random.key(3), n)
  np.testing.assert_array_equal(again["tokens"], rows["tokens"])


def test_majority_labels_follow_the_vote_not_the_answer_key():
  # An untrained model over one-digit sums at a low temperature: its
  # samples repeat, so votes agree on some prompts and not on others.
  task = get_task("arithmetic", max_digits=1)
  n = 8
  key = jax.random.key(5)
  _, _, ref, ref_stats = _rows(task, key, n)
  labelled = {}
  for share in (0.25, 0.5):
    _, _, rows, stats = _rows(task, key, n, labels="majority",
                              min_share=share)
    np.testing.assert_array_equal(rows["tokens"], ref["tokens"])
    answers = [rows["tokens"][r][rows["loss_mask"][r] > 0].tobytes()
               for r in range(rows["tokens"].shape[0])]
    finished = [a.endswith(np.int32(task.eos_id).tobytes()) for a in answers]
    want, agreed = [], []
    for p in range(len(answers) // n):
      group = range(p * n, (p + 1) * n)
      done = [answers[r] for r in group if finished[r]]
      # The most frequent finished answer; ties to the first sample.
      top = max(done, key=lambda a: (done.count(a), -done.index(a)),
                default=None)
      ok = top is not None and done.count(top) >= share * n
      agreed.append(ok)
      want += [float(ok and finished[r] and answers[r] == top)
               for r in group]
    np.testing.assert_array_equal(rows["value_target"], want)
    np.testing.assert_array_equal(rows["policy_weight"], want)
    np.testing.assert_allclose(stats["search/labelled"], np.mean(agreed))
    # The verifier still scores the samples; it made none of the labels.
    assert stats["search/solve_rate"] == ref_stats["search/solve_rate"]
    right = ref["value_target"] > 0.5
    chosen = np.asarray(want) > 0.5
    np.testing.assert_allclose(stats["search/label_precision"],
                               (chosen & right).sum() / max(chosen.sum(), 1))
    labelled[share] = np.asarray(want)
  # The threshold matters, and the labels are not the answer key's.
  assert labelled[0.25].sum() > labelled[0.5].sum()
  assert np.all(labelled[0.5] <= labelled[0.25])
  assert not np.array_equal(labelled[0.25], ref["value_target"])


class _Voted:
  """A stand-in task whose final answers are given ids (free text)."""

  def __init__(self, ids):
    self.ids = np.asarray(ids, np.int32)

  def run(self, prompts, answers):
    del prompts
    return answers

  def answer_ids(self, state):
    del state
    return self.ids


def test_majority_labels_compare_final_answers_not_words():
  from tsearch._src.algorithms.family import SearchOutput
  import jax.numpy as jnp
  # 2 prompts x 4 samples, every answer worded differently.
  cand = jnp.arange(2 * 4 * 3, dtype=jnp.int32).reshape(2, 4, 3)
  out = SearchOutput(
      answers=cand[:, 0], answer_lengths=jnp.full((2,), 3),
      answer_scores=jnp.zeros(2), candidates=cand,
      candidate_lengths=jnp.full((2, 4), 3),
      candidate_scores=jnp.zeros((2, 4)),
      candidate_finished=jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool),
      model_calls=jnp.zeros(2, jnp.int32),
      tokens_forwarded=jnp.zeros(2, jnp.int32))
  # Prompt 0: answer 7 twice (and once unfinished: not a vote), 9 once.
  # Prompt 1: no final answer (-1) three times, 5 once.
  task = _Voted([7, 9, 7, 7, -1, -1, 5, -1])
  label, agreed = sample_learn.majority_labels(
      task, jnp.zeros((8, 2), jnp.int32), out, min_share=0.5)
  np.testing.assert_array_equal(label, [1, 0, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(agreed, [True, False])
  label, agreed = sample_learn.majority_labels(
      task, jnp.zeros((8, 2), jnp.int32), out, min_share=0.25)
  np.testing.assert_array_equal(label, [1, 0, 1, 0, 0, 0, 1, 0])
  label, _ = sample_learn.majority_labels(
      task, jnp.zeros((8, 2), jnp.int32), out, min_share=0.75)
  assert not np.any(label)


def _tiny(tmp_path, **kw):
  """test_train_search's tiny run with 3 sample-and-learn steps."""
  c = train_search_tests._tiny(tmp_path, **{
      "steps": 3, "method": "sample", "num_samples": 4, "sft_weight": 1.0,
      "value_weight": 0.5, "replay_size": 0, **kw})
  c.eval.summary = False
  return c


@pytest.mark.slow
def test_sample_steps_train_log_and_resume_exactly(tmp_path):
  straight = str(tmp_path / "straight")
  last = loop.train(_tiny(tmp_path, anchor_weight=1.0), straight)
  assert 0.0 <= last["search/solve_rate"] <= last["search/pass_at_n"] <= 1.0
  assert last["search/answer_tokens"] >= 1
  assert last["loss/value"] > 0 and last["loss/anchor"] > 0
  c = _tiny(tmp_path, anchor_weight=1.0)
  vw, pw = c.warm_start.value_weight, c.warm_start.policy_weight
  np.testing.assert_allclose(
      last["loss"], last["loss/policy"] + 0.5 * last["loss/value"]
      + pw * last["loss/anchor"] + vw * last["loss/anchor_value"], rtol=1e-5)
  stopped = str(tmp_path / "stopped")
  c.debug.stop_after_steps = 3  # warm 2 + one sample step, then stop
  loop.train(c, stopped)
  loop.train(_tiny(tmp_path, anchor_weight=1.0), stopped)
  drop = lambda ms: [{k: v for k, v in m.items() if k != "steps_per_second"}  # noqa: E731
                     for m in ms]
  assert drop(metrics_lib.read_metrics(straight)) == drop(
      metrics_lib.read_metrics(stopped))
  _, _, p1, s1 = loop.latest_params(_tiny(tmp_path), straight)
  _, _, p2, s2 = loop.latest_params(_tiny(tmp_path), stopped)
  assert s1 == s2 == 5
  jax.tree.map(np.testing.assert_array_equal, p1, p2)


@pytest.mark.slow
def test_majority_labelled_steps_log_what_the_labels_were(tmp_path):
  workdir = str(tmp_path / "vote")
  loop.train(_tiny(tmp_path, steps=2, sample_labels="majority",
                   majority_min_share=0.25), workdir)
  last = metrics_lib.read_metrics(workdir)[-1]
  assert last["step"] == 4
  assert 0 <= last["search/label_precision"] <= 1
  assert 0 <= last["search/labelled"] <= 1
  assert np.isfinite(last["loss/value"]) and last["loss/value"] > 0


@pytest.mark.parametrize("kw,key", [
    (dict(method="beam"), "search.method"),
    (dict(num_samples=0), "search.num_samples"),
    (dict(replay_size=8), "search.replay_size"),
    (dict(step_dpo_weight=1.0, level="step"), "experimental.step_dpo_weight"),
    (dict(sample_labels="vote"), "search.sample_labels"),
    (dict(sample_labels="majority", method="mcts"), "search.sample_labels"),
    (dict(majority_min_share=0.0), "search.majority_min_share"),
])
def test_bad_sample_config_names_the_key(tmp_path, kw, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    config_lib.validate_config(_tiny(tmp_path, **kw))


@pytest.mark.slow
def test_self_training_on_unlabeled_problems_anchors_on_train(tmp_path,
                                                              monkeypatch):
  # Word problems with an "unlabeled" split of longer problems: the search
  # steps sample those and label them by vote; the anchor's reference
  # solutions come from a train batch drawn for it, never from them.
  from configs import word_problems as wp_config
  from train import data as data_lib
  c = wp_config.get_config()
  c.task.options = dict(
      seed=0, num_train=64, num_validation=8, num_test=8, train_ops=(2, 2),
      test_ops=(3, 3), distractors=False, max_value=30, vocab_size=400,
      max_prompt_length=160, max_answer_length=128, num_unlabeled=32,
      tokenizer_dir=str(tmp_path / "tok"))
  c.data.max_len = 288
  c.model.update(num_layers=1, d_model=32, num_heads=2, num_kv_heads=1,
                 head_dim=16, mlp_dim=64, max_seq_len=288)
  c.batch_size = 8
  c.warm_start.steps = 2
  c.search.update(steps=2, method="sample", num_samples=2,
                  sample_labels="majority", replay_size=0)
  c.experimental.update(anchor_weight=1.0,
                        search_problem_split="unlabeled")
  c.log_every_steps = 1
  c.progress_bar = False
  drawn = []
  next_batch = data_lib.ExampleStream.next

  def spy(self, split=None):
    drawn.append(split)
    return next_batch(self, split)

  monkeypatch.setattr(data_lib.ExampleStream, "next", spy)
  last = loop.train(c, str(tmp_path / "run"))
  # Warm start: train; each search step: unlabeled, then the anchor's train.
  assert drawn == [None, None, "unlabeled", None, "unlabeled", None]
  assert last["loss/anchor"] > 0 and "search/label_precision" in last
