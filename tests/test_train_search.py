"""Search-and-learn over tsearch.lm_search: rollouts commit legal actions,
targets are consistent, packed step log-probs match a plain forward, signs
of two-player values, and short runs (with a replay buffer) train and
resume exactly."""
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import models
from train import config as config_lib
from train import experimental
from train import loop
from train import model as model_lib
from train import packing
from train import retract_terms
from train import search_config
from train import search_losses
from train import targets
import tsearch
from tsearch.tasks import vocab as V
from tsearch.tasks.countdown_rules import StrictCountdown
from tsearch.tasks import get_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(task, max_seq_len):
  cfg = models.ModelConfig(vocab_size=task.vocab.size, num_layers=1,
                           d_model=16, num_heads=2, num_kv_heads=1,
                           head_dim=8, mlp_dim=32, max_seq_len=max_seq_len)
  return model_lib.create_model(cfg, seed=0)


def _search(**kw):
  s = config_lib.default_config().search
  s.update(**kw)
  return s


def _loss_terms(fns, params, batch, *, retract=False, pad_id=0,
                max_seq_len=64, jit=False, **options):
  """The step-level loss terms of ``search`` options and experiment
  switches (``train.experimental``) on ``batch`` (the outcome as the value
  target unless set); ``jit``: as one compiled program (faster for a single
  call; eagerly, calls with other options share the compiled ops)."""
  switches = {k: options.pop(k) for k in list(options)
              if k in experimental.DEFAULTS}
  x = experimental.values(ml_collections.ConfigDict(
      dict(experimental=switches)))
  s = _search(**{"level": "step", "value_target": "outcome",
                 "value_mix": 1.0, **options})
  ext = ()
  if retract:
    task = types.SimpleNamespace(retract_token=V.COLON,
                                 step_delimiter=V.NEWLINE, pad_id=pad_id)
    ext = (retract_terms.extension(fns.apply, task,
                                   weight=x["retract_weight"],
                                   sft_weight=s.sft_weight),)
  forward = search_losses.make_forward(
      fns.apply, level=s.level, pad_id=pad_id, max_seq_len=max_seq_len,
      end_token=V.COLON if retract else None)
  loss_fn = search_losses.make_loss_fn(
      forward, search_losses.terms(s, x, two_player=False), ext)
  return (jax.jit(loss_fn) if jit else loss_fn)(params, batch, None)


def test_token_rollout_commits_verified_trajectories():
  task = get_task("arithmetic", max_digits=1)
  fns, params = _model(task, 48)
  problems = task.sample_problems(0, 4)
  prompt, plen = task.encode_prompts(problems)
  s = _search(num_simulations=6, num_children=3, capacity=24)
  cfg = search_config.lm_search_config(s, task)
  assert cfg.pb_c_init == 1.25
  assert search_config.lm_search_config(_search(pb_c_init=3.0),
                                       task).pb_c_init == 3.0
  moves = search_config.num_moves(s, task)
  run = jax.jit(lambda p, k: tsearch.rollout(
      fns.graphdef, fns.state(p), task, prompt, plen, k, config=cfg,
      num_moves=moves))
  r = jax.device_get(run(params, jax.random.key(0)))
  again = jax.device_get(run(params, jax.random.key(0)))
  jax.tree.map(np.testing.assert_array_equal, r, again)  # same key, same run
  m = task.max_answer_length
  assert r["weights"].shape == (4, m, 3)
  for i in range(4):
    pl, n = int(plen[i]), int(r["length"][i])
    np.testing.assert_array_equal(r["seq"][i, :pl], prompt[i, :pl])
    answer = r["seq"][i, pl:n]
    moves_i = int(r["active"][i].sum())
    assert moves_i == n - pl  # one committed token per active move
    np.testing.assert_array_equal(r["offset"][i, :moves_i], np.arange(moves_i))
    padded = np.zeros((1, m), np.int32)
    padded[0, :len(answer)] = answer
    assert r["outcome"][i] == float(task.verify(prompt[i:i + 1], padded)[0])
    for j in range(moves_i):
      w = r["weights"][i, j]
      np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)
      assert np.all(w[~r["children_mask"][i, j]] == 0)
      k = list(r["children_actions"][i, j, :, 0]).index(answer[j])
      assert w[k] > 0  # the committed token was searched
    assert r["seq"][i, n - 1] == task.eos_id
  # Each model call is one node (the root, then one per simulation).
  assert np.all(r["model_calls"] <= 1 + 6 * r["active"].sum(1))
  assert np.all(r["model_calls"] >= 2)  # the root and the committed child


# act_on_solved without solved_by_prior (the lowest solved slot), pruned,
# is the rollout under tests/test_family_search.py's
# test_mcts_act_on_solved_answers_with_a_verified_solution (and the choice of
# slot, tsearch.lm_search.solved_slot, is tests/test_lm_search.py's).
@pytest.mark.slow
@pytest.mark.parametrize("prune,by_prior", [(False, False), (True, True)])
def test_step_rollout_on_strict_countdown(prune, by_prior):
  task = StrictCountdown(get_task("countdown", num_numbers=3, max_number=9,
                                  max_target=20))
  fns, params = _model(task, 160)
  problems = task.sample_problems(1, 3)
  prompt, plen = task.encode_prompts(problems)
  # 20 tokens hold the longest step of one-digit numbers, "(a/b)+(c/d)=(ef/gh)\n".
  s = _search(level="step", num_simulations=5, num_children=3, capacity=16,
              step_length=20, terminal_lookahead=prune,
              prune_terminal_slots=prune)
  cfg = search_config.lm_search_config(s, task)
  assert cfg.mode == "step" and cfg.max_depth == 2
  assert cfg.prune_terminal_slots == cfg.terminal_lookahead == prune
  r = jax.device_get(jax.jit(lambda p, k: tsearch.rollout(
      fns.graphdef, fns.state(p), task, prompt, plen, k, config=cfg,
      num_moves=2, act_on_solved=prune, solved_by_prior=by_prior,
      record_choices=True))(
          params, jax.random.key(3)))
  if prune:
    # The last move's steps all end the answer: pruned, so that move was
    # not searched (no slot, no policy target) and a scored step was taken.
    assert not r["children_mask"][:, 1].any()
    assert not r["weights"][:, 1].any()
  # A move that followed a verified solution leads to one, and its policy
  # target is that step alone.
  found = r["found"][:, 0]
  assert found.any() == prune  # (two of the three with this key)
  for i in np.nonzero(found)[0]:
    assert r["outcome"][i] == 1.0
    w = r["weights"][i, 0]
    assert sorted(w.tolist())[-2:] == [0.0, 1.0]
  assert r["children_actions"].shape == (3, 2, 3, 20)
  for i in range(3):
    pl, n = int(plen[i]), int(r["length"][i])
    answer = r["seq"][i, pl:n]
    text = task.decode(answer)
    # Under the rules mask every committed step is correct arithmetic.
    assert text.count("\n") == 1 and answer[-1] == task.eos_id, text
    padded = np.zeros((1, task.max_answer_length), np.int32)
    padded[0, :len(answer)] = answer
    assert r["outcome"][i] == float(task.verify(prompt[i:i + 1], padded)[0])
    for j in range(2):
      acts = r["children_actions"][i, j]
      start = int(r["offset"][i, j])
      committed = [list(a[a >= 0]) for a in acts]
      end = int(r["offset"][i, 1]) if j == 0 else n - pl
      assert list(answer[start:end]) in committed  # one of the K steps
      if r["children_mask"][i, j].any():
        np.testing.assert_allclose(r["weights"][i, j].sum(), 1.0, rtol=1e-5)
      # Choice tokens: from "=" on a step is forced (the exact result and
      # the newline); every valid step makes at least one choice.
      choice = r["children_choice"][i, j]
      for c in range(3):
        step = acts[c][acts[c] >= 0]
        if not r["children_mask"][i, j, c]:
          assert not choice[c].any()
          continue
        eq = list(step).index(V.EQUALS)
        assert choice[c, :eq].any() and not choice[c, eq:].any(), \
            task.decode(step)


def _packed_case(seed):
  """A model, B=2 committed sequences of L=10 tokens and their M=2 x K=3
  candidate steps of S=4 random tokens (numpy, to pad)."""
  task = get_task("arithmetic", max_digits=1)
  fns, params = _model(task, 64)
  rng = np.random.default_rng(seed)
  seq = jnp.asarray(rng.integers(3, task.vocab.size, (2, 10)), jnp.int32)
  length, start = jnp.array([9, 10]), jnp.array([[4, 6], [5, 8]])
  steps = rng.integers(3, task.vocab.size, (2, 2, 3, 4))
  return fns, params, seq, length, start, steps


@pytest.mark.slow
def test_packed_forward_matches_one_sequence_per_step():
  fns, params, seq, length, start, steps = _packed_case(0)
  b, l = seq.shape
  m, k = steps.shape[1:3]
  steps[0, 0, 1, 2:] = -1
  steps[1, 1, 2, 1:] = -1
  steps = jnp.asarray(steps, jnp.int32)
  out, lp, sv = packing.packed_forward(fns.apply, params, seq, length,
                                            start, steps, pad_id=0,
                                            max_seq_len=64)
  ref = packing.step_logprobs(fns.apply, params, seq, start, steps,
                                   pad_id=0)
  np.testing.assert_allclose(lp, ref, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(lp) < 0)
  plain = fns.apply(params, seq, jnp.broadcast_to(jnp.arange(l), (b, l)),
                    jnp.arange(l)[None] < length[:, None])
  np.testing.assert_allclose(out.value[0, :9], plain.value[0, :9], atol=1e-5)
  np.testing.assert_allclose(out.logits[1], plain.logits[1], atol=1e-4)
  # The value after each step: its prefix and the step, forwarded alone
  # (jitted: eagerly each op compiles for each of the lengths).
  apply = jax.jit(fns.apply)
  for i in range(b):
    for j in range(m):
      for c in range(k):
        step = np.asarray(steps[i, j, c])
        one = np.concatenate([np.asarray(seq[i, :int(start[i, j])]),
                              step[step >= 0]])[None]
        ref_v = apply(params, jnp.asarray(one),
                      jnp.arange(one.shape[1])[None],
                      jnp.ones(one.shape, bool)).value[0, -1]
        np.testing.assert_allclose(sv[i, j, c], ref_v, atol=1e-5)


def test_packed_forward_counts_only_choice_tokens():
  fns, params, seq, length, start, steps = _packed_case(2)
  steps = jnp.asarray(steps, jnp.int32)
  b, m, k, s = steps.shape
  kw = dict(pad_id=0, max_seq_len=64)
  _, full, _ = packing.packed_forward(fns.apply, params, seq, length,
                                           start, steps, **kw)
  # Only the first two tokens a choice: the log-prob of the 2-token prefix.
  choice = jnp.broadcast_to(jnp.arange(s) < 2, steps.shape)
  _, two, _ = packing.packed_forward(fns.apply, params, seq, length,
                                          start, steps, choice=choice, **kw)
  ref = packing.step_logprobs(fns.apply, params, seq, start,
                                   steps[..., :2], pad_id=0)
  np.testing.assert_allclose(two, ref, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(two) > np.asarray(full))
  # In the loss: the batch's children_choice.
  batch = dict(
      seq=seq, length=length, prompt_length=jnp.array([4, 5]),
      offset=jnp.array([[0, 2], [0, 3]]), outcome=jnp.array([1.0, 1.0]),
      weights=jnp.full((b, m, k), 1.0 / k), children_actions=steps,
      children_mask=jnp.ones((b, m, k), bool), root_value=jnp.zeros((b, m)),
      active=jnp.ones((b, m), bool))
  nll = _loss_terms(fns, params, batch, step_policy_loss="nll")["policy"]
  nll_two = _loss_terms(fns, params, dict(batch, children_choice=choice),
                        step_policy_loss="nll")["policy"]
  np.testing.assert_allclose(nll.total / nll.count,
                             -np.mean(np.asarray(full)), rtol=1e-4)
  np.testing.assert_allclose(nll_two.total / nll_two.count,
                             -np.mean(np.asarray(two)), rtol=1e-4)


def test_retract_term_reads_the_take_back_token_after_first_move_steps():
  fns, params, seq, length, start, steps = _packed_case(3)
  steps[0, 0, 1, 2:] = -1
  steps = jnp.asarray(steps, jnp.int32)
  b, m, k, s = steps.shape
  kw = dict(pad_id=0, max_seq_len=64)
  _, _, sv, end_lp = packing.packed_forward(
      fns.apply, params, seq, length, start, steps, end_token=V.COLON, **kw)
  apply = jax.jit(fns.apply)
  for i, j, c in ((0, 0, 1), (1, 0, 2), (1, 1, 0)):
    step = np.asarray(steps[i, j, c])
    one = np.concatenate([np.asarray(seq[i, :int(start[i, j])]),
                          step[step >= 0]])[None]
    logits = apply(params, jnp.asarray(one), jnp.arange(one.shape[1])[None],
                   jnp.ones(one.shape, bool)).logits[0, -1]
    np.testing.assert_allclose(
        end_lp[i, j, c], jax.nn.log_softmax(logits)[V.COLON], atol=1e-5)
  # The loss: binary cross-entropy of P(":") against 1 - q on the first
  # move's slots only (offset 0), q the tree's Q where searched, else the
  # value after the step.
  rng = np.random.default_rng(4)
  visits = jnp.asarray(rng.integers(0, 2, (b, m, k)), jnp.int32)
  q = jnp.asarray(rng.uniform(-0.2, 1.2, (b, m, k)), jnp.float32)
  mask = jnp.ones((b, m, k), bool).at[1, 0, 0].set(False)
  batch = dict(
      seq=seq, length=length, prompt_length=jnp.array([4, 5]),
      offset=jnp.array([[0, 2], [0, 3]]), outcome=jnp.array([1.0, 0.0]),
      weights=jnp.full((b, m, k), 1.0 / k), children_actions=steps,
      children_mask=mask, root_value=jnp.zeros((b, m)),
      active=jnp.ones((b, m), bool), children_q=q, children_visits=visits)
  term = _loss_terms(fns, params, batch, retract=True,
                     retract_weight=1.0)["retract"]
  target = 1.0 - np.clip(np.where(np.asarray(visits) > 0, q, sv), 0, 1)
  p = np.exp(np.asarray(end_lp))
  bce = -(target * np.log(p) + (1 - target) * np.log1p(-p))
  first = np.asarray(mask).copy()
  first[:, 1] = False
  assert float(term.count) == first.sum() == 2 * k - 1
  np.testing.assert_allclose(float(term.total), bce[first].sum(), rtol=1e-4)


def test_retraction_sequence_and_its_language_model_term():
  seq = jnp.array([[1, 5, 6, 7, 8, 9, 0], [1, 5, 6, 7, 8, 0, 0]], jnp.int32)
  length, plen = jnp.array([6, 5]), jnp.array([2, 3])
  step = jnp.array([[11, 12, 13], [14, -1, -1]], jnp.int32)
  out, len2 = retract_terms.retraction_sequence(
      seq, length, plen, step, pad_id=0, retract_token=V.COLON,
      delimiter=V.NEWLINE)
  c, n = V.COLON, V.NEWLINE
  np.testing.assert_array_equal(out, [
      [1, 5, 11, 12, 13, c, n, 6, 7, 8, 9, 0],
      [1, 5, 6, 14, c, n, 7, 8, 0, 0, 0, 0]])
  np.testing.assert_array_equal(len2, [11, 8])
  # In the loss: only solved rows with a dead candidate (1 - q > 0.5) other
  # than the move made, scored from ":" on.
  fns, params, seq, length, start, steps = _packed_case(3)
  steps = jnp.asarray(steps, jnp.int32)
  b, m, k, s = steps.shape
  q = jnp.full((b, m, k), 0.9).at[0, 0, 2].set(0.1).at[1, 0, 0].set(0.2)
  weights = jax.nn.one_hot(jnp.zeros((b, m), jnp.int32), k)  # slot 0 made
  batch = dict(
      seq=seq, length=length, prompt_length=jnp.array([4, 5]),
      offset=jnp.array([[0, 2], [0, 3]]), outcome=jnp.array([1.0, 1.0]),
      weights=weights, children_actions=steps,
      children_mask=jnp.ones((b, m, k), bool), root_value=jnp.zeros((b, m)),
      active=jnp.ones((b, m), bool), children_q=q,
      children_visits=jnp.ones((b, m, k), jnp.int32))
  term = _loss_terms(fns, params, batch, retract=True, jit=True,
                     retract_weight=1.0)["retract_sft"]
  # Row 0 takes back slot 2; row 1's dead slot 0 is the move made: none.
  ref_seq, ref_len = retract_terms.retraction_sequence(
      seq[:1], length[:1], jnp.array([4]), steps[:1, 0, 2], pad_id=0,
      retract_token=V.COLON, delimiter=V.NEWLINE)
  l2 = ref_seq.shape[1]
  logits = fns.apply(params, ref_seq, jnp.arange(l2)[None],
                     jnp.arange(l2)[None] < ref_len[:, None]).logits
  logp = jax.nn.log_softmax(logits[0, :-1])
  at = 4 + int(np.sum(np.asarray(steps[0, 0, 2]) >= 0))  # the ":"
  assert int(ref_seq[0, at]) == V.COLON
  want = -sum(float(logp[j - 1, ref_seq[0, j]]) for j in range(at, int(ref_len[0])))
  assert float(term.count) == int(ref_len[0]) - at
  np.testing.assert_allclose(float(term.total), want, rtol=1e-4)


def test_step_policy_losses_nll_and_candidates():
  task = get_task("arithmetic", max_digits=1)
  fns, params = _model(task, 64)
  rng = np.random.default_rng(1)
  b, l, m, k, s = 2, 10, 2, 3, 4
  steps = jnp.asarray(rng.integers(3, task.vocab.size, (b, m, k, s)),
                      jnp.int32)
  weights = jnp.asarray(rng.dirichlet(np.ones(k), (b, m)), jnp.float32)
  batch = dict(
      seq=jnp.asarray(rng.integers(3, task.vocab.size, (b, l)), jnp.int32),
      length=jnp.array([9, 10]), prompt_length=jnp.array([4, 5]),
      offset=jnp.array([[0, 2], [0, 3]]), outcome=jnp.array([1.0, 0.0]),
      weights=weights, children_actions=steps,
      children_mask=jnp.ones((b, m, k), bool),
      root_value=jnp.zeros((b, m)), active=jnp.ones((b, m), bool))
  kw = dict(pad_id=task.pad_id, max_seq_len=64)
  start = batch["prompt_length"][:, None] + batch["offset"]
  lp = packing.step_logprobs(fns.apply, params, batch["seq"], start,
                                  steps, pad_id=task.pad_id)
  nll = _loss_terms(fns, params, batch, **kw)
  cand = _loss_terms(fns, params, batch, step_policy_loss="candidates", **kw)
  ref_nll = -np.sum(weights * lp) / (b * m)
  ref_cand = -np.sum(weights * jax.nn.log_softmax(lp, -1)) / (b * m)
  np.testing.assert_allclose(nll["policy"].total / nll["policy"].count,
                             ref_nll, rtol=1e-4)
  np.testing.assert_allclose(cand["policy"].total / cand["policy"].count,
                             ref_cand, rtol=1e-4)
  assert ref_cand < ref_nll  # renormalised over K: a smaller loss
  # policy_on_solved: only row 0 (outcome 1) is a policy target; the value
  # loss is unchanged.
  only = _loss_terms(fns, params, batch, step_policy_loss="candidates",
                     policy_on_solved=True, **kw)
  assert "value_policy" not in only  # only with value_policy_weight > 0
  ref_only = -np.sum(weights[0] * jax.nn.log_softmax(lp[0], -1)) / m
  assert int(only["policy"].count) == m
  np.testing.assert_allclose(only["policy"].total / only["policy"].count,
                             ref_only, rtol=1e-4)
  np.testing.assert_allclose(only["value"].total, cand["value"].total,
                             rtol=1e-6)
  with pytest.raises(ValueError, match="step_policy_loss"):
    search_losses.policy_term(level="step", step_policy_loss="ce")
  # value_policy: on every move (unsolved row 1 too, even with
  # policy_on_solved), CE against softmax(lp + scale * value after step).
  _, _, sv = packing.packed_forward(
      fns.apply, params, batch["seq"], batch["length"], start, steps,
      pad_id=task.pad_id, max_seq_len=64)
  # In the form step_policy_loss names: renormalised over the K
  # candidates, or the weighted log-likelihood of the steps.
  for scale in (0.0, 10.0):
    target = jax.nn.softmax(lp + scale * np.asarray(sv), -1)
    for form, ref_lp in (("candidates", jax.nn.log_softmax(lp, -1)),
                         ("nll", lp)):
      vp = _loss_terms(fns, params, batch, policy_on_solved=True,
                       value_policy_weight=1.0, value_policy_scale=scale,
                       step_policy_loss=form, **kw)["value_policy"]
      ref_vp = -np.sum(target * ref_lp) / (b * m)
      assert int(vp.count) == b * m
      np.testing.assert_allclose(vp.total / vp.count, ref_vp, rtol=1e-4)
  assert not np.allclose(jax.nn.softmax(lp + 10 * np.asarray(sv), -1),
                         jax.nn.softmax(lp, -1), atol=1e-3)


def test_search_config_checks_what_the_context_holds():
  task = get_task("arithmetic", max_digits=1)
  p, t = task.max_prompt_length, task.max_answer_length
  s = _search(num_simulations=4, num_children=3, capacity=8)
  moves = search_config.num_moves(s, task)
  assert moves == t  # token level: one move per answer token
  depth = search_config.lm_search_config(s, task).max_depth
  assert depth == min(moves, 4)
  fits = types.SimpleNamespace(max_seq_len=p + t + depth)
  search_config.check_fits(s, task, fits)
  with pytest.raises(ValueError, match=f"Search needs {p + t + depth} "
                     "positions"):
    search_config.check_fits(s, task, types.SimpleNamespace(
        max_seq_len=p + t + depth - 1))
  with pytest.raises(ValueError, match="search.capacity=3 must be >= "):
    search_config.check_fits(_search(num_simulations=4, capacity=3), task,
                             fits)
  # Step level: the packed trajectory (P + T + moves x K x S) must fit too.
  step = _search(level="step", num_simulations=4, num_children=3,
                 capacity=8, step_length=4, max_moves=2)
  packed = p + t + 2 * 3 * 4
  search_config.check_fits(step, task,
                           types.SimpleNamespace(max_seq_len=packed))
  with pytest.raises(ValueError, match=f"into {packed} positions"):
    search_config.check_fits(step, task, types.SimpleNamespace(
        max_seq_len=packed - 1))


def test_value_outcomes_flip_sign_for_two_players():
  active = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
  outcome = jnp.array([1.0, 1.0])  # for the player who moved last
  np.testing.assert_array_equal(
      targets.value_outcomes(outcome, active, two_player=True),
      [[1, -1, 1, -1], [-1, 1, -1, 1]])
  np.testing.assert_array_equal(
      targets.value_outcomes(outcome, active, two_player=False),
      np.ones((2, 4)))


def test_connect_four_rollout_plays_legal_games():
  task = get_task("connect_four", max_opening=2)
  fns, params = _model(task, 96)
  prompt, plen = task.encode_prompts([(3,), (0, 6)])
  s = _search(num_simulations=4, num_children=7, capacity=16)
  cfg = search_config.lm_search_config(s, task)
  r = jax.device_get(jax.jit(lambda p, k: tsearch.rollout(
      fns.graphdef, fns.state(p), task, prompt, plen, k, config=cfg,
      num_moves=task.max_answer_length))(params, jax.random.key(0)))
  for i in range(2):
    pl, n = int(plen[i]), int(r["length"][i])
    answer = r["seq"][i, pl:n]
    assert int(r["active"][i].sum()) == n - pl
    padded = np.zeros((1, task.max_answer_length), np.int32)
    padded[0, :len(answer)] = answer
    # Games end (win or full board) with the mover's result: +1 or 0.
    state = task.run(prompt[i:i + 1], padded)
    assert bool(task.is_terminal(state)[0])
    assert r["outcome"][i] == float(task.reward(state)[0])
    assert r["outcome"][i] in (0.0, 1.0)


def _tiny(tmp_path, **search):
  """configs/tiny.py, shortened; ``search`` sets search keys and
  experiment switches (``train.experimental``)."""
  c = config_lib.load_config_file(os.path.join(REPO, "configs", "tiny.py"))
  c.warm_start.steps = 2
  c.search.update(steps=2, num_simulations=4, num_children=3, capacity=32,
                  algorithm="gumbel", value_target="mix", sft_weight=0.5,
                  policy_on_solved=False)
  switches = {k: search.pop(k) for k in list(search)
              if k in experimental.DEFAULTS}
  c.experimental = experimental.config(**switches)
  c.search.update(**search)
  c.batch_size = 8
  c.log_every_steps = 1
  c.checkpoint.every_steps = 100
  c.progress_bar = False
  return c


@pytest.mark.slow
def test_warm_start_then_search_steps(tmp_path):
  last = loop.train(_tiny(tmp_path), str(tmp_path / "run"))
  assert 0.0 <= last["search/solve_rate"] <= 1.0
  assert last["search/answer_tokens"] >= 2  # at least a digit and EOS
  assert last["search/model_calls"] > 4  # root + simulations per move
  assert last["loss/policy"] > 0 and np.isfinite(last["loss"])
  np.testing.assert_allclose(
      last["loss"], last["loss/policy"] + 0.5 * last["loss/value"]
      + 0.5 * last["loss/sft"], rtol=1e-5)


@pytest.mark.slow
def test_replay_buffer_is_checkpointed_and_resumes_exactly(tmp_path):
  kw = dict(steps=3, replay_size=16, updates_per_search=2)
  straight = str(tmp_path / "straight")
  loop.train(_tiny(tmp_path, **kw), straight)
  stopped = str(tmp_path / "stopped")
  c = _tiny(tmp_path, **kw)
  c.debug.stop_after_steps = 4  # warm 2 + search 2, then stop
  loop.train(c, stopped)
  ckpt = loop.checkpointer(c, stopped)
  assert ckpt.latest_step() == 4
  assert ckpt.has_replay(4)
  ckpt.close()
  loop.train(_tiny(tmp_path, **kw), stopped)  # resumes at 4
  from train import metrics as metrics_lib
  m1 = metrics_lib.read_metrics(straight)
  m2 = metrics_lib.read_metrics(stopped)
  drop = lambda ms: [{k: v for k, v in m.items() if k != "steps_per_second"}  # noqa: E731
                     for m in ms]
  assert drop(m1) == drop(m2)
  assert m1[-1]["replay/size"] == 16.0  # 3 searches x 8 rows, capped at 16
  assert m1[-2]["replay/size"] == 16.0 and m1[-3]["replay/size"] == 8.0
  _, _, p1, s1 = loop.latest_params(_tiny(tmp_path, **kw), straight)
  _, _, p2, s2 = loop.latest_params(_tiny(tmp_path, **kw), stopped)
  assert s1 == s2 == 5
  jax.tree.map(np.testing.assert_array_equal, p1, p2)


@pytest.mark.slow
def test_warm_start_checkpoint_continues_into_search_steps(tmp_path):
  # With experimental.search_learning_rate set, a warm-start-only run
  # (search.steps=0, no replay buffer saved) continued with search steps
  # ends with the parameters of the run made in one go.
  kw = dict(steps=2, replay_size=16, updates_per_search=2,
            search_learning_rate=1e-3)
  straight = str(tmp_path / "straight")
  loop.train(_tiny(tmp_path, **kw), straight)
  split = str(tmp_path / "split")
  loop.train(_tiny(tmp_path, **dict(kw, steps=0)), split)
  ckpt = loop.checkpointer(_tiny(tmp_path, **kw), split)
  assert ckpt.latest_step() == 2 and not ckpt.has_replay(2)
  ckpt.close()
  loop.train(_tiny(tmp_path, **kw), split)  # resumes at 2, empty buffer
  _, _, p1, s1 = loop.latest_params(_tiny(tmp_path, **kw), straight)
  _, _, p2, s2 = loop.latest_params(_tiny(tmp_path, **kw), split)
  assert s1 == s2 == 4
  jax.tree.map(np.testing.assert_array_equal, p1, p2)


def test_bad_replay_config_is_a_clear_error(tmp_path):
  c = _tiny(tmp_path, replay_size=4)
  with pytest.raises(ValueError, match="replay_size"):
    config_lib.validate_config(c)


@pytest.mark.slow
def test_search_steps_with_a_warm_start_anchor(tmp_path):
  # experimental.anchor_weight: every search update also trains on a warm-start
  # batch; the total is the weighted sum with the warm start's weights.
  c = _tiny(tmp_path, anchor_weight=2.0, replay_size=16, updates_per_search=1)
  last = loop.train(c, str(tmp_path / "run"))
  assert last["loss/anchor"] > 0 and last["loss/anchor_value"] > 0
  vw, pw = c.warm_start.value_weight, c.warm_start.policy_weight
  np.testing.assert_allclose(
      last["loss"], last["loss/policy"] + 0.5 * last["loss/value"]
      + 0.5 * last["loss/sft"] + 2.0 * pw * last["loss/anchor"]
      + 2.0 * vw * last["loss/anchor_value"], rtol=1e-5)
  c.experimental.anchor_weight = -1.0
  with pytest.raises(ValueError, match="experimental.anchor_weight"):
    config_lib.validate_config(c)
