"""The one decoder (the search family's KV-cached rows, ``greedy`` and
``sampling``): greedy == argmax of repeated full forwards under the task's
legal mask, EOS ends a row, sampling is reproducible and key dependent."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
import tsearch
from tests.test_family_helpers import model_for

TASK = tsearch.get_task("arithmetic", max_digits=2)  # answers of 2-4 tokens
GD, ST = model_for(TASK, seed=1)
PT, PL = TASK.encode_prompts(TASK.sample_problems(seed=5, num=4))
T = TASK.max_answer_length


def test_greedy_equals_argmax_of_full_forwards():
  out = jax.device_get(tsearch.get_algorithm("greedy")(
      GD, ST, TASK, PT, PL, jax.random.key(0)))
  fwd = jax.jit(models.forward, static_argnums=0)
  p = PT.shape[1]
  width = p + T
  for b in range(len(PL)):
    seq = list(PT[b, :PL[b]])
    state = TASK.init_state(PT[b:b + 1])
    for _ in range(T):
      if bool(TASK.is_terminal(state)[0]):
        break
      # Causal: right padding to a fixed width leaves the last real
      # position exact.
      x = jnp.array([seq + [TASK.pad_id] * (width - len(seq))])
      o = fwd(GD, ST, x, jnp.arange(width)[None])
      logits = jnp.where(TASK.legal_mask(state)[0],
                         o.logits[0, len(seq) - 1, :TASK.vocab.size], -jnp.inf)
      tok = int(jnp.argmax(logits))
      seq.append(tok)
      state = TASK.step(state, jnp.array([tok]))
    n = len(seq) - int(PL[b])
    assert int(out.answer_lengths[b]) == n
    np.testing.assert_array_equal(out.answers[b, :n], seq[PL[b]:])
    assert (out.answers[b, n:] == TASK.pad_id).all()
    assert seq[-1] == TASK.eos_id  # every greedy answer ended
    x = jnp.array([seq + [TASK.pad_id] * (width - len(seq))])
    value = fwd(GD, ST, x, jnp.arange(width)[None]).value[0, len(seq) - 1]
    np.testing.assert_allclose(out.answer_scores[b], value, atol=1e-5)
  assert out.candidate_finished.all()


def test_sampling_reproducible_and_key_dependent():
  sample = tsearch.get_algorithm("sampling")
  outs = [jax.device_get(sample(GD, ST, TASK, PT, PL, jax.random.key(k),
                                temperature=3.0)) for k in (7, 7, 8)]
  np.testing.assert_array_equal(outs[0].answers, outs[1].answers)
  assert (outs[0].answers != outs[2].answers).any()
  for out in outs:  # under the legal mask every answer is well formed
    assert out.candidate_finished.all()
    for a, n in zip(out.answers, out.answer_lengths):
      assert a[n - 1] == TASK.eos_id and (a[n:] == TASK.pad_id).all()


def test_bad_inputs():
  greedy = tsearch.get_algorithm("greedy")
  with pytest.raises(ValueError, match=r"prompt_tokens must be \[B, P="):
    greedy(GD, ST, TASK, PT[:, :-1], PL, jax.random.key(0))
  with pytest.raises(ValueError, match="temperature must be > 0"):
    tsearch.get_algorithm("sampling")(GD, ST, TASK, PT, PL, jax.random.key(0),
                                      temperature=0.0)
