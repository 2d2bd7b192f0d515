"""Tasks: problems as tokens, and jittable environments with exact verifiers.

Registry: ``get_task(name, **options)`` with names ``arithmetic``,
``countdown``, ``game24``, ``connect_four``, and the math word problems
``gsm8k`` and ``word_problems`` (written in words over a BPE tokenizer:
:mod:`tsearch.tasks.gsm8k_task`, :mod:`tsearch.tasks.word_problems`). Countdown and the Game of 24
also take ``strict=True`` (the legal mask is the game's rules), ``notation``
(``"plain"``, ``"left"``: the numbers left after each step, or
``"left_first"``) and ``retract=R`` (an answer may take back its first step R
times); see :mod:`tsearch.tasks.countdown_rules`. The first three share one
character vocabulary (:data:`ARITH_VOCAB`), so one model can learn them all.

Example (runs on CPU in seconds)::

  import jax, jax.numpy as jnp
  import tsearch.tasks as tasks

  task = tasks.get_task("game24")
  problems = task.sample_problems(seed=0, num=8)      # [((4, 5, 7, 13), 24), ...] (train split)
  prompts, prompt_lengths = task.encode_prompts(problems)  # [B, P] int32, [B]
  answers = task.solution_tokens(problems)            # [B, T] reference solver
  print(task.decode(prompts[0]), task.decode(answers[0]))
  rewards = jax.jit(task.verify)(prompts, answers)    # [B] float32, all 1.0

  # Token by token, as a search or a sampler would drive it:
  state = task.init_state(prompts)                    # frozen dataclass of arrays
  mask = task.legal_mask(state)                       # [B, V] bool
  state = task.step(state, answers[:, 0])             # append one token [B]
  task.is_terminal(state), task.reward(state)         # [B] bool, [B] float32
  task.discount(state)                                # 1 / -1 (two players) / 0 at the end
  task.step_delimiter                                 # "\\n" token: ends a step

Conventions (see :mod:`tsearch.tasks.base`): prompts are BOS + text,
right-padded with PAD=0 to ``task.max_prompt_length``; answers are at most
``task.max_answer_length`` tokens including EOS; a token the grammar forbids
makes the answer invalid (reward 0) without raising; a terminal state's
legal mask is PAD only and stepping it is a no-op. ``task.solution_text``
writes a reference solution for supervised warm starts.

Over a real tokenizer (pretrained models): ``tsearch.tasks.text.over_tokenizer(
task, tokenizer, chat_template=True)`` runs any of these tasks with text
prompts (a chat template around the problem) and one model token per symbol;
steps end where the delimiter's text completes (see :mod:`tsearch.tasks.text`).

Connect Four (``num_players == 2``): tokens ``"0".."6"`` are columns (pgx
actions), the prompt is BOS plus an opening, and ``reward`` is the result of
the finished game from the point of view of the player who made the last
move (+1 win, 0 draw or not over, -1 illegal move), i.e. the reward on the
edge for the player who chose it; use discount -1 on non-terminal edges.
"""
import functools

from tsearch.tasks import countdown_rules
from tsearch.tasks.arithmetic import Arithmetic
from tsearch.tasks.base import Task, TaskState
from tsearch.tasks.countdown import (Countdown, Game24, format_number, game24_puzzles,
                                     game24_splits, solve)
from tsearch.tasks.vocab import (ARITH_VOCAB, BOS, CONNECT_FOUR_VOCAB, EOS, NEWLINE, PAD,
                                 Vocabulary)

_REGISTRY = {
    "arithmetic": Arithmetic,
    "countdown": functools.partial(countdown_rules.make, Countdown),
    "game24": functools.partial(countdown_rules.make, Game24),
}


def _connect_four(**options):
  from tsearch.tasks.connect_four import ConnectFour  # pgx import is slow
  return ConnectFour(**options)


_REGISTRY["connect_four"] = _connect_four


def _gsm8k(**options):
  from tsearch.tasks.gsm8k_task import Gsm8kTask  # loads the jsonl files
  return Gsm8kTask(**options)


_REGISTRY["gsm8k"] = _gsm8k


def _word_problems(**options):
  from tsearch.tasks import word_problems  # generates the splits
  return word_problems.make_task(**options)


_REGISTRY["word_problems"] = _word_problems
# Tasks written in words over the model's own tokenizer (option
# ``tokenizer_dir``; a run over ``model.checkpoint`` passes its directory),
# not symbol tasks to read through ``tsearch.tasks.text.over_tokenizer``.
# ``word_problems`` trains its own BPE tokenizer when given none.
TEXT_TASK_NAMES = ("gsm8k", "word_problems")

TASK_NAMES = tuple(sorted(_REGISTRY))
# Tasks with reference solutions, so a TFDS dataset (``tsearch.data``).
DATASET_TASK_NAMES = ("arithmetic", "countdown", "game24")


def get_task(name: str, **options) -> Task:
  """The task called ``name``, configured by keyword ``options``.

  Raises:
    ValueError: for an unknown name (the message lists the known ones) or
      options out of range.
  """
  if name not in _REGISTRY:
    raise ValueError(f"Unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}.")
  try:
    return _REGISTRY[name](**options)
  except TypeError as e:
    raise ValueError(f"Bad options {options} for task {name!r}: {e}") from None
