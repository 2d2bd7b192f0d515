"""How well does the value head rank the policy's own samples?

  PYTHONPATH=. python experiments/word_problems/value_ranking.py \
      --workdir /tmp/wpG --steps 2000,2060 --split validation_ood \
      --num_problems 100 "--config.task.options.train_ops=(2,6)" ...

(with the run's config overrides). For each checkpoint: ``N`` samples per
problem (best-of-N's sampler, one key), each scored by the value head after
its last token and by the answer checker. Prints the share of samples that
are right, pass@N, what each way of choosing one answer per problem solves
(value-weighted vote, majority vote, the single highest value), and the
value's AUC: the chance that a right sample of a problem outranks a wrong
one of the same problem (0.5 is chance), over problems with both. The
checker only scores here; no choice reads it.
"""
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

import tsearch
from train import evaluate as ev
from tsearch._src.algorithms.family import choose
from tsearch._src.rollout import answer_sequence
from rollouts import LINE
import models

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/word_problems.py", "Run config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_STEPS = flags.DEFINE_list("steps", None, "Checkpoint steps.")
_SPLIT = flags.DEFINE_string("split", "validation_ood", "Problem split.")
_NUM = flags.DEFINE_integer("num_problems", 100, "Problems.")
_N = flags.DEFINE_integer("samples", 16, "Samples per problem.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling key.")
flags.mark_flags_as_required(["workdir", "steps"])


def within_problem_auc(scores: np.ndarray, right: np.ndarray) -> float:
  """Mean over problems with right and wrong samples of P(score of a right
  sample > a wrong one's), ties counted half."""
  aucs = []
  for s, r in zip(scores, right):
    pos, neg = s[r], s[~r]
    if len(pos) and len(neg):
      diff = pos[:, None] - neg[None, :]
      aucs.append(np.mean((diff > 0) + 0.5 * (diff == 0)))
  return float(np.mean(aucs)) if aucs else float("nan")


def confidence(fns, params, task, prompts, lengths, answers, answer_lengths,
               chunk=200):
  """``(mean, min)`` log-probability of each answer's tokens under the
  policy (teacher-forced), ``[R]`` each."""
  @jax.jit
  def one(p, l, a, al):
    seq = answer_sequence(p, l, a, al, pad_id=task.pad_id)
    r, t = seq.shape
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (r, t))
    end = (l + al)[:, None]
    out = models.forward(fns.graphdef, fns.state(params), seq, pos,
                         token_mask=pos < end)
    logp = jax.nn.log_softmax(out.logits[:, :-1].astype(jnp.float32), -1)
    tok = jnp.take_along_axis(logp, seq[:, 1:, None], -1)[..., 0]
    mask = (pos[:, 1:] >= l[:, None]) & (pos[:, 1:] < end)
    mean = jnp.sum(tok * mask, -1) / jnp.maximum(mask.sum(-1), 1)
    return mean, jnp.min(jnp.where(mask, tok, 0.0), -1)
  means, mins = [], []
  for i in range(0, len(prompts), chunk):
    m, n = one(*(x[i:i + chunk] for x in (prompts, lengths, answers,
                                          answer_lengths)))
    means.append(np.asarray(m))
    mins.append(np.asarray(n))
  return np.concatenate(means), np.concatenate(mins)


def main(argv):
  del argv
  steps = [int(s) for s in _STEPS.value]
  task, fns, restored = ev.restore(_CONFIG.value, _WORKDIR.value, steps)
  problems = task.eval_problems(_NUM.value, split=_SPLIT.value)
  prompts, lengths = task.encode_prompts(problems)
  n = _N.value
  for step, params in restored:
    out = tsearch.get_algorithm("best_of_n")(
        fns.graphdef, fns.state(params), task, prompts, lengths,
        jax.random.key(_SEED.value), budget=n)
    b, _, t = out.candidates.shape
    states = task.run(np.repeat(prompts, n, 0),
                      out.candidates.reshape(b * n, t))
    right = np.asarray(task.reward(states)).reshape(b, n) > 0.5
    ids = task.answer_ids(states)
    ids = None if ids is None else ids.reshape(b, n)
    scores = np.asarray(out.candidate_scores)
    finished = np.asarray(out.candidate_finished)
    picks = {}
    for agg in ("weighted", "majority", "best_value"):
      idx = np.asarray(choose(
          out.candidates, out.candidate_lengths, out.candidate_scores,
          out.candidate_finished, aggregate=agg, answer_ids=ids))
      picks[agg] = right[np.arange(b), idx].mean()
    flat = lambda x: np.asarray(x).reshape(b * n, -1)  # noqa: E731
    mean_lp, min_lp = confidence(
        fns, params, task, np.repeat(prompts, n, 0),
        np.repeat(lengths, n, 0), flat(out.candidates),
        flat(out.candidate_lengths)[:, 0])
    for name, c in (("mean logprob", mean_lp), ("min logprob", min_lp)):
      c = c.reshape(b, n)
      print(f"  {name}: AUC within a problem "
            f"{within_problem_auc(c, right):.3f}, chosen by the highest "
            f"{right[np.arange(b), np.argmax(c, 1)].mean():.3f}")
    # Right by its lines too: every "a op b = c" line as the reference's.
    sound = np.zeros_like(right)
    for i, p in enumerate(problems):
      gold = LINE.findall(p.solution)
      for j in range(n):
        text = task.decode(np.asarray(out.candidates[i, j]))
        sound[i, j] = right[i, j] and LINE.findall(text) == gold
    print(f"  right samples with every line as the reference's: "
          f"{int(sound.sum())}/{int(right.sum())}; pass@{n} counting only "
          f"those {sound.any(1).mean():.3f}")
    print(f"{_SPLIT.value} step {step}: {b} problems x {n} samples; "
          f"right {right.mean():.3f}, finished {finished.mean():.3f}, "
          f"pass@{n} {right.any(1).mean():.3f}; chosen by value-weighted "
          f"vote {picks['weighted']:.3f}, majority {picks['majority']:.3f}, "
          f"highest value {picks['best_value']:.3f}; value AUC within a "
          f"problem {within_problem_auc(scores, right):.3f}; mean value "
          f"right {scores[right].mean() if right.any() else float('nan'):.3f}"
          f", wrong {scores[~right].mean():.3f}", flush=True)


if __name__ == "__main__":
  app.run(main)
