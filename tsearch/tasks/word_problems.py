"""Synthetic math word problems a small CPU model can learn, in GSM8K format.

Each problem is a short story about people who own a number of one kind of
object (``apples``, ``marbles``, ...). Its quantities change through 1-12
dependent operations (``+``, ``-``, ``*`` and exact ``/``; every operand
and every result in 2..999), as a chain (one person's count changes step by
step) or a small DAG (a second or third person's count is stated relative
to another's, and the question combines them). Optional distractor sentences
add numbers that do not affect the answer. The reference solution has one
line per operation, each with exactly one ``a op b = c``, then GSM8K's
``#### answer`` line::

  Ann owns 44 cookies. Ann's school has 95 classrooms. Ann uses 29 cookies
  for a school project. Ann trades a toy for 55 extra cookies. Mia owns 5
  times as many cookies as Ann does. Mia wins 25 cookies in a game. What is
  the total number of cookies that Ann and Mia have?

  Ann gives up 29, so she has 44 - 29 = 15 cookies left.
  Ann now has 15 + 55 = 70 cookies.
  So Mia has 70 * 5 = 350 cookies.
  With the new cookies, Mia has 350 + 25 = 375.
  Ann and Mia have 70 + 375 = 445 cookies in total.
  #### 445

("Ann's school has 95 classrooms" is a distractor.) Every operation type
has at least ten question templates (and three to five solution-line
templates), so a model cannot memorise surface forms. The answer checker
is :func:`score`; :func:`final_answer` gives ``FreeTextTask`` the final
answer to vote over.

* :func:`generate` draws problems from a seed;
* :func:`splits` makes train / validation / test (the train's number of
  operations) and validation_ood / test_ood (more operations), with no
  question shared between splits;
* :func:`train_tokenizer` trains a byte-level BPE tokenizer (digits one by
  one, BOS/EOS/PAD) on the text and saves a Hugging Face tokenizer
  directory that :meth:`models.Tokenizer.from_dir` loads;
* :func:`make_task` puts them together into a
  :class:`~tsearch.tasks.free_text.FreeTextTask` named ``word_problems``
  scored by :func:`score` (:func:`tsearch.tasks.math_answers.score`, GSM8K
  kind); ``tsearch.tasks.get_task("word_problems", **options)`` calls it
  (the tokenizer goes to :func:`default_tokenizer_dir` unless
  ``tokenizer_dir`` is given).

Everything is deterministic: the same seed gives the same problems, and the
same problems give the same ``tokenizer.json`` bytes.

Example::

  from tsearch.tasks import word_problems as wp

  problems = wp.generate(0, 3, min_ops=2, max_ops=4, distractors=True)
  print(problems[0].question, problems[0].solution, sep="\\n")
  data = wp.splits(0, num_train=100, num_validation=10, num_test=10)
  sorted(data)  # ['test', 'test_ood', 'train', 'validation', 'validation_ood']
  task = wp.make_task(seed=0, tokenizer_dir="/tmp/wp_tok", num_train=200,
                      num_validation=10, num_test=10)
  prompts, lengths = task.encode_prompts(task.eval_problems(4))
  answers = task.solution_tokens(task.eval_problems(4))
  task.verify(prompts, answers)  # [1., 1., 1., 1.]
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
from typing import Sequence

import numpy as np

from tsearch.tasks import math_answers
from tsearch.tasks.free_text import FreeTextTask, TextProblem

MIN_VALUE = 2  # every operand and every result is in [MIN_VALUE, MAX_VALUE]
MAX_VALUE = 999
MAX_OPS = 12
STYLES = ("plain", "quote")  # solution styles (:func:`generate`)
SPLIT_NAMES = ("train", "validation", "test", "validation_ood", "test_ood")
# The random stream of each split (``generate`` uses stream 0).
_STREAMS = {"generate": 0, "train": 1, "validation": 2, "test": 3,
            "validation_ood": 4, "test_ood": 5, "unlabeled": 6}
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|pad|>", "<|bos|>", "<|eos|>"

# ------------------------------------------------------------------ entities
_FEMALE = ("Ann", "Mia", "Zoe", "Lily", "Emma", "Nora", "Ruth", "Ivy", "Sara",
           "Maya", "Lena", "Rosa", "Kate", "Jade", "Tara", "Hana", "Eva",
           "Alice", "Grace", "Chloe")
_MALE = ("Ben", "Leo", "Sam", "Omar", "Jack", "Noah", "Liam", "Owen", "Eli",
         "Hugo", "Ravi", "Tom", "Finn", "Kai", "Luis", "Max", "Adam", "Ivan",
         "Felix", "Jonah")
_OBJECTS = ("apple", "marble", "sticker", "pencil", "card", "book", "shell",
            "coin", "cookie", "stamp", "bead", "balloon", "egg", "crayon",
            "button", "toy car", "lemon", "candle", "rock", "feather",
            "ribbon", "ticket", "plum", "block", "peach", "pear")
_PLURALS = {"peach": "peaches"}
_CONTAINERS = (("box", "boxes"), ("bag", "bags"), ("pack", "packs"),
               ("jar", "jars"), ("basket", "baskets"), ("crate", "crates"),
               ("tray", "trays"), ("tin", "tins"))
_FRACTIONS = {2: "half", 3: "third", 4: "quarter", 5: "fifth", 6: "sixth",
              7: "seventh", 8: "eighth", 9: "ninth"}

# ----------------------------------------------------------------- templates
# Fields: {P} the person, {he}/{his}/{him} their pronouns, {X} a bystander,
# {v} the value before, {n} an added / removed amount, {k} a factor,
# {times} "twice" / "3 times", {a_frac} "half" / "a third", {obj} the
# objects, {box}/{boxes} a container, {m} objects per container, {x} = k*m,
# {c} the result.
_INTRO = (
    "{P} has {v} {obj}.",
    "{P} starts with {v} {obj}.",
    "{P} owns {v} {obj}.",
    "There are {v} {obj} in {P}'s room.",
    "{P} keeps {v} {obj} in a drawer.",
    "At first, {P} has {v} {obj}.",
    "{P} has a collection of {v} {obj}.",
    "In the morning, {P} has {v} {obj}.",
    "{P} brings {v} {obj} to school.",
    "{P} has {v} {obj} at home.",
)

_CHAIN = {
    "add": (
        "{P} buys {n} more {obj}.",
        "Then {P} finds {n} more {obj}.",
        "{P}'s friend gives {him} {n} {obj}.",
        "{P} collects another {n} {obj}.",
        "After that, {P} gets {n} more {obj} as a gift.",
        "{P} wins {n} {obj} in a game.",
        "Later, {P} picks up {n} more {obj}.",
        "{P} receives {n} {obj} from a neighbor.",
        "The next day, {P} adds {n} {obj} to {his} collection.",
        "{P}'s grandmother sends {him} {n} more {obj}.",
        "{X} gives {P} {n} {obj}.",
        "{P} trades a toy for {n} extra {obj}.",
    ),
    "sub": (
        "{P} gives {n} {obj} to {X}.",
        "{P} loses {n} {obj}.",
        "Then {P} sells {n} of {his} {obj}.",
        "{P} uses {n} {obj} for a school project.",
        "{P} gives away {n} {obj}.",
        "After that, {P} drops {n} {obj} and cannot find them.",
        "{P} donates {n} {obj} to a charity.",
        "{P} trades away {n} {obj}.",
        "{X} takes {n} of {P}'s {obj}.",
        "Later, {P} shares {n} {obj} with a classmate and does not get them "
        "back.",
        "{P} leaves {n} {obj} at the park.",
        "{P} puts {n} {obj} in the trash because they are broken.",
    ),
    "mul": (
        "Then {P} ends up with {times} as many {obj} as before.",
        "After a good week, {P} has {times} as many {obj} as {he} had.",
        "{P} buys enough {obj} to have {times} as many as before.",
        "{P}'s collection of {obj} grows to {times} its size.",
        "By the end of the month, {P} has {times} the {obj} {he} had.",
        "{P} trades each of {his} {obj} for {k} new {obj}.",
        "A magic trick turns each of {P}'s {obj} into {k} {obj}.",
        "{P} swaps every one of {his} {obj} for {k} {obj}.",
        "For each {obj_one} {P} has, {he} gets {k} {obj} in return and "
        "gives the old ones away.",
        "The number of {obj} that {P} has becomes {times} as large.",
        "{P} multiplies {his} {obj} by {k} in a trading game.",
    ),
    "div": (
        "{P} splits {his} {obj} into {k} equal groups and keeps one group.",
        "{P} keeps only {a_frac} of {his} {obj} and gives the rest away.",
        "{P} puts {his} {obj} into {k} equal {boxes} and keeps just one "
        "{box}.",
        "{P} loses all but {a_frac} of {his} {obj}.",
        "{P} keeps one out of every {k} {obj} and gives away the others.",
        "{P} gives away most of {his} {obj}, keeping just {a_frac}.",
        "{P} sorts {his} {obj} into {k} equal piles and keeps one pile.",
        "{P} shares {his} {obj} equally among {k} children, {him}self "
        "included, and keeps {his} share.",
        "After the move, only {a_frac} of {P}'s {obj} are left.",
        "{P} swaps every {k} of {his} {obj} for one new {obj_one}.",
        "{P} divides {his} {obj} into {k} equal parts and sells all parts "
        "but one.",
    ),
    "boxes": (  # two operations: x = k * m, then v + x
        "{P} buys {k} {boxes} of {obj} with {m} {obj} in each {box}.",
        "{P} gets {k} {boxes} that hold {m} {obj} each.",
        "Then {P} receives {k} {boxes} of {obj}, and each {box} has {m} "
        "{obj}.",
        "{P} wins {k} {boxes} with {m} {obj} in every {box}.",
        "{X} gives {P} {k} {boxes}, each with {m} {obj} inside.",
        "{P} collects {k} full {boxes}; a full {box} holds {m} {obj}.",
        "Later, {P} picks up {k} {boxes} of {m} {obj} each.",
        "{P} orders {k} {boxes} of {obj}, with {m} {obj} per {box}.",
        "Each {box} holds {m} {obj}, and {P} buys {k} of them.",
        "{P} brings home {k} {boxes} of {obj}; there are {m} {obj} in each "
        "{box}.",
    ),
}
_CHAIN_LINES = {
    "add": (
        "{P} gets {n} more, so {he} has {v} + {n} = {c} {obj}.",
        "After that, {P} has {v} + {n} = {c} {obj}.",
        "{P} now has {v} + {n} = {c} {obj}.",
        "Adding {n} gives {P} {v} + {n} = {c} {obj}.",
        "With the new {obj}, {P} has {v} + {n} = {c}.",
    ),
    "sub": (
        "{P} gives up {n}, so {he} has {v} - {n} = {c} {obj} left.",
        "That leaves {P} with {v} - {n} = {c} {obj}.",
        "{P} now has {v} - {n} = {c} {obj}.",
        "After that, {P} has {v} - {n} = {c} {obj} left.",
        "Taking away {n} leaves {v} - {n} = {c} {obj}.",
    ),
    "mul": (
        "{P} now has {v} * {k} = {c} {obj}.",
        "So {P} has {v} * {k} = {c} {obj}.",
        "That makes {v} * {k} = {c} {obj}.",
        "{k} times as many is {v} * {k} = {c} {obj}.",
    ),
    "div": (
        "{P} keeps {v} / {k} = {c} {obj}.",
        "That leaves {v} / {k} = {c} {obj}.",
        "One of {k} equal parts is {v} / {k} = {c} {obj}.",
        "So {P} has {v} / {k} = {c} {obj}.",
    ),
    "boxes": (
        "The {boxes} hold {k} * {m} = {x} {obj}.",
        "{k} {boxes} of {m} are {k} * {m} = {x} {obj}.",
        "That is {k} * {m} = {x} new {obj}.",
    ),
    "boxes_add": (
        "So {P} has {v} + {x} = {c} {obj}.",
        "{P} now has {v} + {x} = {c} {obj}.",
        "Adding them, {P} has {v} + {x} = {c} {obj}.",
    ),
}
# A new person {P} whose count is stated from {Q}'s count {v} (fixed from
# then on: {Q} changes no more).
_RELATION = {
    "add": (
        "{P} has {n} more {obj} than {Q}.",
        "{P} owns {n} {obj} more than {Q} does.",
        "{Q}'s friend {P} has {n} more {obj} than {Q}.",
        "{P} has as many {obj} as {Q}, plus {n} more.",
        "{P} has collected {n} more {obj} than {Q}.",
        "Compared with {Q}, {P} has {n} extra {obj}.",
        "{P}'s pile of {obj} is {n} bigger than {Q}'s.",
        "{Q} has {n} fewer {obj} than {P}.",
        "{P} is ahead of {Q} by {n} {obj}.",
        "{P}'s jar holds {n} more {obj} than {Q}'s jar.",
    ),
    "sub": (
        "{P} has {n} fewer {obj} than {Q}.",
        "{P} owns {n} {obj} less than {Q} does.",
        "{Q}'s friend {P} has {n} fewer {obj} than {Q}.",
        "{P} has as many {obj} as {Q}, minus {n}.",
        "{P} has collected {n} fewer {obj} than {Q}.",
        "Compared with {Q}, {P} has {n} fewer {obj}.",
        "{P}'s pile of {obj} is {n} smaller than {Q}'s.",
        "{Q} has {n} more {obj} than {P}.",
        "{P} is behind {Q} by {n} {obj}.",
        "{P}'s jar holds {n} fewer {obj} than {Q}'s jar.",
    ),
    "mul": (
        "{P} has {times} as many {obj} as {Q}.",
        "{P} owns {times} as many {obj} as {Q} does.",
        "{Q}'s friend {P} has {times} as many {obj} as {Q}.",
        "{P} has collected {times} as many {obj} as {Q}.",
        "{P}'s pile of {obj} is {times} the size of {Q}'s.",
        "For every {obj_one} {Q} has, {P} has {k}.",
        "{P} has {times} the number of {obj} that {Q} has.",
        "{P}'s jar holds {times} as many {obj} as {Q}'s jar.",
        "The number of {obj} {P} has is {times} {Q}'s number.",
        "{P} has {k} {obj} for each {obj_one} that {Q} has.",
    ),
    "div": (
        "{P} has {a_frac} as many {obj} as {Q}.",
        "{P} owns {a_frac} as many {obj} as {Q} does.",
        "{Q}'s friend {P} has {a_frac} as many {obj} as {Q}.",
        "{P} has collected {a_frac} as many {obj} as {Q}.",
        "{P}'s pile of {obj} is {a_frac} the size of {Q}'s.",
        "For every {k} {obj} {Q} has, {P} has one.",
        "{P} has {a_frac} the number of {obj} that {Q} has.",
        "{Q} has {times} as many {obj} as {P}.",
        "{P}'s jar holds {a_frac} as many {obj} as {Q}'s jar.",
        "{P} has one {obj_one} for every {k} {obj} that {Q} has.",
    ),
}
_RELATION_LINES = {
    "add": ("{P} has {v} + {n} = {c} {obj}.",
            "So {P} has {v} + {n} = {c} {obj}.",
            "{P}'s count is {v} + {n} = {c} {obj}."),
    "sub": ("{P} has {v} - {n} = {c} {obj}.",
            "So {P} has {v} - {n} = {c} {obj}.",
            "{P}'s count is {v} - {n} = {c} {obj}."),
    "mul": ("{P} has {v} * {k} = {c} {obj}.",
            "So {P} has {v} * {k} = {c} {obj}.",
            "{P}'s count is {v} * {k} = {c} {obj}."),
    "div": ("{P} has {v} / {k} = {c} {obj}.",
            "So {P} has {v} / {k} = {c} {obj}.",
            "{P}'s count is {v} / {k} = {c} {obj}."),
}
# Questions. {names}: "Ann and Ben" / "Ann, Ben and Eli".
_ASK = (
    "How many {obj} does {P} have now?",
    "How many {obj} does {P} have at the end?",
    "How many {obj} does {P} end up with?",
    "How many {obj} does {P} have in the end?",
    "What is the number of {obj} {P} has now?",
    "How many {obj} does {P} have after all this?",
    "How many {obj} are with {P} at the end?",
    "In the end, how many {obj} does {P} have?",
    "Now how many {obj} does {P} have?",
    "Count {P}'s {obj}: how many are there now?",
)
_ASK_SUM = (
    "How many {obj} do {names} have together?",
    "How many {obj} do {names} have altogether?",
    "How many {obj} do {names} have in total?",
    "What is the total number of {obj} that {names} have?",
    "How many {obj} do {names} have combined?",
    "If {names} put their {obj} together, how many are there?",
    "Altogether, how many {obj} do {names} have?",
    "What is the sum of the {obj} that {names} have?",
    "How many {obj} do {names} own between them?",
    "In total, how many {obj} do {names} have now?",
)
_ASK_DIFF = (  # {P} has more than {Q}
    "How many more {obj} does {P} have than {Q}?",
    "How many fewer {obj} does {Q} have than {P}?",
    "By how many {obj} does {P} beat {Q}?",
    "What is the difference between {P}'s and {Q}'s numbers of {obj}?",
    "How many {obj} would {Q} need to get to match {P}?",
    "How many {obj} more than {Q} does {P} have?",
    "How far ahead of {Q} is {P}, in {obj}?",
    "How many more {obj} are with {P} than with {Q}?",
    "By how many {obj} is {Q} behind {P}?",
    "How many {obj} does {P} have beyond what {Q} has?",
)
_SUM_LINES = ("Together, {A} and {B} have {a} + {b} = {c} {obj}.",
              "{A} and {B} have {a} + {b} = {c} {obj} in total.",
              "{A} and {B} have {a} + {b} = {c} {obj} altogether.",
              "Adding {B}'s to {A}'s gives {a} + {b} = {c} {obj}.")
_SUM_MORE_LINES = ("With {B}'s, that is {a} + {b} = {c} {obj}.",
                   "Adding {B}'s gives {a} + {b} = {c} {obj}.",
                   "With {B} too, they have {a} + {b} = {c} {obj}.")
_DIFF_LINES = ("{P} has {a} - {b} = {c} more {obj} than {Q}.",
               "The difference is {a} - {b} = {c} {obj}.",
               "So {P} is ahead by {a} - {b} = {c} {obj}.")
# Sentences whose numbers do not change the answer ({D}: another object).
_DISTRACTORS = (
    "{X} has {n} {D}.",
    "{P} also keeps {n} {D} in a drawer.",
    "{X} is {n} years old.",
    "The shop is {n} minutes from {P}'s home.",
    "{P}'s school has {n} classrooms.",
    "It takes {P} {n} minutes to walk to the park.",
    "{X}'s dog weighs {n} pounds.",
    "{P} reads {n} pages of a book that day.",
    "There are {n} trees on {P}'s street.",
    "{X} counts {n} birds in the garden.",
    "{P}'s favorite number is {n}.",
    "{X} once had {n} {D}, but lost them all.",
)


# ------------------------------------------------------------------ drawing
@dataclasses.dataclass
class _Person:
  name: str
  he: str
  his: str
  him: str
  value: int = 0


class _Retry(Exception):
  """The drawn numbers did not work out; draw the problem again."""


def _pick(rng: np.random.Generator, seq):
  return seq[int(rng.integers(len(seq)))]


def _plural(noun: str) -> str:
  return _PLURALS.get(noun, noun + "s")


def _factor_words(k: int) -> dict:
  return dict(k=k, times="twice" if k == 2 else f"{k} times",
              a_frac="half" if k == 2 else ("an " if k == 8 else "a ")
              + _FRACTIONS[k])


def _feasible(kind: str, v: int, cap: int) -> bool:
  """Whether ``v <kind> operand`` can have operands and a result in
  [2, cap] (``boxes``: adds at least 2 * 2)."""
  if kind == "add":
    return v + MIN_VALUE <= cap
  if kind == "sub":
    return v - MIN_VALUE >= MIN_VALUE
  if kind == "mul":
    return 2 * v <= cap
  if kind == "div":
    return any(v % k == 0 and v // k >= MIN_VALUE for k in range(2, 10))
  if kind == "boxes":
    return v + 4 <= cap
  raise ValueError(f"Unknown operation {kind!r}.")


def _arith(rng, kind: str, v: int, cap: int) -> dict:
  """Operands for ``v <kind> operand`` with a result in [2, cap] (call
  only where :func:`_feasible`)."""
  if kind == "add":
    return dict(n=int(rng.integers(2, min(60, cap - v) + 1)))
  if kind == "sub":
    return dict(n=int(rng.integers(2, min(60, v - MIN_VALUE) + 1)))
  if kind == "mul":
    return _factor_words(int(rng.integers(2, min(9, cap // v) + 1)))
  if kind == "div":
    ks = [k for k in range(2, 10) if v % k == 0 and v // k >= MIN_VALUE]
    return _factor_words(_pick(rng, ks))
  # boxes: k containers of m; at worst 2 of 2.
  k = int(rng.integers(2, 10))
  m = int(rng.integers(2, 13))
  while v + k * m > cap:
    k, m = max(2, k - 1), max(2, m - 1)
  return dict(k=k, m=m, x=k * m)


def _result(kind: str, v: int, args: dict) -> int:
  if kind == "add":
    return v + args["n"]
  if kind == "sub":
    return v - args["n"]
  if kind == "mul":
    return v * args["k"]
  if kind == "div":
    return v // args["k"]
  return v + args["x"]  # boxes


_CHAIN_WEIGHTS = {"add": 0.28, "sub": 0.26, "mul": 0.18, "div": 0.18,
                  "boxes": 0.10}


def _initial_value(rng, cap: int) -> int:
  while True:  # cap >= 108 never draws twice
    if rng.random() < 0.5:
      v = int(rng.integers(2, 61))
    else:
      v = int(rng.integers(2, 10)) * int(rng.integers(2, 13))
    if v <= cap:
      return v


def _draw_plan(rng, num_ops: int):
  """(derived sources per extra person, final kind, chain ops per person)."""
  while True:
    people = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    sources = [None]  # sources[i]: index of the person i is derived from
    for i in range(1, people):
      sources.append(int(rng.integers(i)) if rng.random() < 0.6 else None)
    if people == 1:
      final = "ask"
    else:
      finals = ["sum"] + (["diff"] if people == 2 else [])
      if all(sources[i] == i - 1 for i in range(1, people)):
        finals.append("ask")  # everyone flows into the last person
      final = _pick(rng, finals)
    fixed = sum(s is not None for s in sources) + (
        0 if final == "ask" else 1 if final == "diff" else people - 1)
    chain = num_ops - fixed
    if chain >= 0:
      counts = rng.multinomial(chain, [1 / people] * people) if chain else (
          np.zeros(people, int))
      return sources, final, [int(c) for c in counts]


def _fields(person: _Person, **extra) -> dict:
  return dict(P=person.name, he=person.he, his=person.his, him=person.him,
              **extra)


def _draw_problem(rng, num_ops: int, distractors: bool,
                  max_value: int = MAX_VALUE,
                  style: str = "plain") -> TextProblem:
  """One problem with exactly ``num_ops`` operations (raises _Retry)."""
  sources, final, counts = _draw_plan(rng, num_ops)
  num_people = len(sources)
  females = rng.permutation(len(_FEMALE))
  males = rng.permutation(len(_MALE))
  names = []
  for i in range(num_people + 2):  # the story's people, then 2 bystanders
    if rng.random() < 0.5:
      names.append((_FEMALE[females[i]], "she", "her", "her"))
    else:
      names.append((_MALE[males[i]], "he", "his", "him"))
  people = [_Person(*n) for n in names[:num_people]]
  bystanders = [n[0] for n in names[num_people:]]
  obj_one = _pick(rng, _OBJECTS)
  obj = _plural(obj_one)
  other_objects = [_plural(o) for o in _OBJECTS if o != obj_one]
  box, boxes = _pick(rng, _CONTAINERS)
  common = dict(obj=obj, obj_one=obj_one, box=box, boxes=boxes)
  cap = max_value // num_people if final == "sum" else max_value
  sentences, lines = [], []
  quotes = []  # per line: the sentence it works out, or "" (style="quote")

  def say(templates, fields):
    sentences.append(_pick(rng, templates).format(**common, **fields))

  def write(templates, fields, quote=None):
    lines.append(_pick(rng, templates).format(**common, **fields))
    quotes.append(sentences[-1] if quote is None else quote)

  for i, person in enumerate(people):
    x_name = _pick(rng, bystanders)
    if sources[i] is None:
      person.value = _initial_value(rng, cap)
      say(_INTRO, _fields(person, v=person.value))
    else:
      source = people[sources[i]]
      kinds = [k for k in _RELATION if _feasible(k, source.value, cap)]
      if not kinds:
        raise _Retry
      kind = _pick(rng, kinds)
      args = _arith(rng, kind, source.value, cap)
      person.value = _result(kind, source.value, args)
      f = _fields(person, Q=source.name, v=source.value, c=person.value,
                  **args)
      say(_RELATION[kind], f)
      write(_RELATION_LINES[kind], f)
    left = counts[i]
    while left:
      kinds = [k for k in _CHAIN if (k != "boxes" or left >= 2)
               and _feasible(k, person.value, cap)]
      if not kinds:
        raise _Retry
      w = np.array([_CHAIN_WEIGHTS[k] for k in kinds])
      kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
      args = _arith(rng, kind, person.value, cap)
      v, c = person.value, _result(kind, person.value, args)
      f = _fields(person, X=x_name, v=v, c=c, **args)
      say(_CHAIN[kind], f)
      if kind == "boxes":
        write(_CHAIN_LINES["boxes"], f)
        write(_CHAIN_LINES["boxes_add"], f, quote="")
        left -= 2
      else:
        write(_CHAIN_LINES[kind], f)
        left -= 1
      person.value = c

  if final == "ask":
    asked = people[-1]
    question = _pick(rng, _ASK).format(**common, **_fields(asked))
    answer = asked.value
  elif final == "diff":
    big, small = sorted(people, key=lambda p: -p.value)
    answer = big.value - small.value
    if answer < MIN_VALUE:
      raise _Retry
    question = _pick(rng, _ASK_DIFF).format(**common, P=big.name,
                                            Q=small.name)
    write(_DIFF_LINES, dict(P=big.name, Q=small.name, a=big.value,
                            b=small.value, c=answer), quote=question)
  else:
    order = [people[int(i)] for i in rng.permutation(num_people)]
    names_text = (" and ".join(p.name for p in order) if num_people == 2 else
                  ", ".join(p.name for p in order[:-1]) + " and "
                  + order[-1].name)
    question = _pick(rng, _ASK_SUM).format(**common, names=names_text)
    total = order[0].value
    for j, p in enumerate(order[1:]):
      new = total + p.value
      write(_SUM_LINES if j == 0 else _SUM_MORE_LINES,
            dict(A=order[0].name, B=p.name, a=total, b=p.value, c=new),
            quote=question if j == 0 else "")
      total = new
    answer = total
  if not MIN_VALUE <= answer <= max_value:
    raise _Retry

  if distractors:  # after the first sentence, which introduces people[0]
    for _ in range(int(rng.integers(1, 3))):
      text = _pick(rng, _DISTRACTORS).format(
          P=people[0].name, X=_pick(rng, bystanders),
          n=int(rng.integers(2, 100)), D=_pick(rng, other_objects))
      sentences.insert(int(rng.integers(1, len(sentences) + 1)), text)
  if len(lines) != num_ops:  # a bug, not bad luck
    raise AssertionError(f"drew {len(lines)} operations, wanted {num_ops}")
  if style == "quote":  # after every draw: the same problems as "plain"
    lines = [f"{q} {line}" if q else line for q, line in zip(quotes, lines)]
  return TextProblem(question=" ".join(sentences + [question]),
                     answer=str(answer),
                     solution="\n".join(lines + [f"#### {answer}"]))


def _check_range(min_ops: int, max_ops: int, max_value: int,
                 style: str = "plain") -> None:
  if style not in STYLES:
    raise ValueError(f"style must be one of {STYLES}; got {style!r}.")
  if not 1 <= min_ops <= max_ops <= MAX_OPS:
    raise ValueError(f"Need 1 <= min_ops <= max_ops <= {MAX_OPS}; got "
                     f"min_ops={min_ops}, max_ops={max_ops}.")
  if not 30 <= max_value <= MAX_VALUE:
    raise ValueError(f"max_value must be in 30..{MAX_VALUE}; got "
                     f"{max_value}.")


def _stream(seed: int, stream: int, num: int, min_ops: int, max_ops: int,
            distractors: bool, exclude: set[str],
            max_value: int = MAX_VALUE,
            style: str = "plain") -> list[TextProblem]:
  """``num`` problems with questions not in ``exclude`` (nor repeated)."""
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
  _check_range(min_ops, max_ops, max_value, style)
  out, seen = [], set(exclude)
  index, limit = 0, 50 * num + 1000
  while len(out) < num:
    if index >= limit:
      raise ValueError(
          f"Found only {len(out)} distinct new problems with {min_ops}-"
          f"{max_ops} operations in {limit} draws; ask for fewer.")
    rng = np.random.default_rng([int(seed), stream, index])
    index += 1
    num_ops = int(rng.integers(min_ops, max_ops + 1))
    for _ in range(1000):
      try:
        problem = _draw_problem(rng, num_ops, distractors, max_value, style)
        break
      except _Retry:
        continue
    else:  # never seen: some drawing always works
      raise RuntimeError(f"No problem with {num_ops} operations in 1000 "
                         "tries.")
    if problem.question not in seen:
      seen.add(problem.question)
      out.append(problem)
  return out


def generate(seed: int, num: int, *, min_ops: int = 2, max_ops: int = 4,
             distractors: bool = False, max_value: int = MAX_VALUE,
             style: str = "plain") -> list[TextProblem]:
  """``num`` distinct word problems, deterministic from ``seed``.

  Args:
    seed: a non-negative int; the same seed gives the same problems.
    num: how many.
    min_ops, max_ops: each problem's number of operations (solution lines
      before ``####``) is drawn uniformly from this range (1..12).
    distractors: add 1-2 sentences whose numbers do not matter.
    max_value: every quantity, operand and result is at most this
      (30..999; smaller numbers make the arithmetic easier to learn).
    style: ``"plain"`` (GSM8K's lines) or ``"quote"``: each line first
      copies the sentence of the question it works out (the question
      itself before the line that combines the people's counts), then
      computes. The same seed gives the same questions and answers in
      both styles; only the solutions differ.

  Returns:
    ``TextProblem(question, answer, solution)`` s; ``answer`` is the final
    number as a string, ``solution`` one line per operation then
    ``#### answer``.

  >>> p = generate(0, 1, min_ops=3, max_ops=3)[0]
  >>> num_ops(p), p.solution.endswith("#### " + p.answer)
  (3, True)
  """
  return _stream(seed, _STREAMS["generate"], num, min_ops, max_ops,
                 distractors, set(), max_value, style)


def splits(seed: int, *, num_train: int, num_validation: int, num_test: int,
           train_ops: tuple[int, int] = (2, 4),
           test_ops: tuple[int, int] = (5, 8), distractors: bool = True,
           num_validation_ood: int | None = None,
           num_test_ood: int | None = None,
           max_value: int = MAX_VALUE, num_unlabeled: int = 0,
           unlabeled_ops: tuple[int, int] | None = None,
           style: str = "plain") -> dict[str, list[TextProblem]]:
  """Train / evaluation splits that share no question.

  Returns ``{"train", "validation", "test"}`` with ``train_ops`` operations
  per problem and ``{"validation_ood", "test_ood"}`` with ``test_ops`` (by
  default more: out of distribution). Each split has its own random stream
  of ``seed``; the held-out splits claim their problems first (test_ood,
  validation_ood, test, validation) and each later split skips every
  question an earlier one holds, so train never changes an evaluation
  split and no text is shared.

  Args:
    seed: a non-negative int.
    num_train, num_validation, num_test: split sizes.
    train_ops, test_ops: ``(min_ops, max_ops)`` of the in-distribution
      and the out-of-distribution splits.
    distractors: distractor sentences in every split.
    num_validation_ood, num_test_ood: their sizes (default: as
      ``num_validation`` / ``num_test``).
    max_value: the largest quantity (:func:`generate`).
    num_unlabeled: with a positive size, also ``"unlabeled"``: problems with
      ``unlabeled_ops`` operations (default ``test_ops``) for training
      without the answer key (``search.sample_labels='majority'``; their
      answers only score). Claimed after train, so the other splits do not
      change.
    style: the solutions' style (:func:`generate`).
  """
  sizes = {"test_ood": num_test if num_test_ood is None else num_test_ood,
           "validation_ood": (num_validation if num_validation_ood is None
                              else num_validation_ood),
           "test": num_test, "validation": num_validation,
           "train": num_train}
  claimed: set[str] = set()
  out = {}
  for name, num in sizes.items():
    lo, hi = test_ops if name.endswith("_ood") else train_ops
    out[name] = _stream(seed, _STREAMS[name], num, lo, hi, distractors,
                        claimed, max_value, style)
    claimed.update(p.question for p in out[name])
  names = SPLIT_NAMES
  if num_unlabeled:
    lo, hi = unlabeled_ops or test_ops
    out["unlabeled"] = _stream(seed, _STREAMS["unlabeled"], num_unlabeled,
                               lo, hi, distractors, claimed, max_value,
                               style)
    names += ("unlabeled",)
  return {name: out[name] for name in names}


def num_ops(problem: TextProblem) -> int:
  """The number of operations (solution lines before ``####``)."""
  return sum(1 for line in problem.solution.split("\n")
             if not line.startswith("####"))


# ---------------------------------------------------------------- scoring
def score(text: str, gold: str) -> float:
  """GSM8K scoring, :func:`tsearch.tasks.math_answers.score` (one final
  answer, compared exactly as a number).

  >>> score("Ann has 5 + 3 = 8 apples.\\n#### 8", "8")
  1.0
  """
  return math_answers.score(text, gold, kind="gsm8k")


def final_answer(text: str) -> str | None:
  """The canonical final answer of a completion (for majority voting): the
  one :func:`score` reads, as a reduced fraction; None if it has none, an
  unparsable one or two different ones.

  >>> final_answer("5 + 3 = 8\\n#### 8.0"), final_answer("#### 8\\n#### 9")
  ('8', None)
  """
  answer = math_answers.extract_answer(text, kind="gsm8k")
  number = None if answer is None else math_answers.parse_number(answer)
  return None if number is None else str(number)


# --------------------------------------------------------------- tokenizer
# Qwen2's pre-tokenizer split: letters, one digit at a time, punctuation,
# whitespace.
_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
                  r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def training_text(problem: TextProblem) -> str:
  """The text a problem contributes to tokenizer training."""
  return problem.question + "\n" + (problem.solution or problem.answer)


def train_tokenizer(problems: Sequence[TextProblem], out_dir, *,
                    vocab_size: int = 768):
  """Trains a byte-level BPE tokenizer on ``problems`` and saves it.

  Digits are split one by one (as Qwen's), so every number is a sequence of
  digit tokens; ids 0, 1, 2 are ``<|pad|>``, ``<|bos|>``, ``<|eos|>``. The
  directory gets ``tokenizer.json``, ``tokenizer_config.json`` (bos / eos /
  pad, BOS added when encoding with special tokens) and
  ``generation_config.json`` (``eos_token_id``). The same problems give the
  same ``tokenizer.json`` bytes.

  Args:
    problems: the texts to train on (questions and solutions).
    out_dir: the directory to write (made if missing).
    vocab_size: the vocabulary size including the 256 byte tokens and the
      three special tokens.

  Returns:
    The saved tokenizer, loaded with :meth:`models.Tokenizer.from_dir`.
  """
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models as tok_models, pre_tokenizers
  import models  # pylint: disable=g-import-not-at-top

  if vocab_size < 259:
    raise ValueError(f"vocab_size={vocab_size} is below the 256 byte tokens "
                     "plus 3 special tokens.")
  if not problems:
    raise ValueError("train_tokenizer needs at least one problem.")
  tok = tokenizers.Tokenizer(tok_models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(_SPLIT_PATTERN),
                           behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, show_progress=False,
      special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([training_text(p) for p in problems],
                          trainer=trainer)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tok.save(str(out / "tokenizer.json"), pretty=True)
  ids = {t: tok.token_to_id(t) for t in (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)}
  config = dict(tokenizer_class="PreTrainedTokenizerFast",
                bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                add_bos_token=True, add_eos_token=False,
                clean_up_tokenization_spaces=False)
  generation = dict(bos_token_id=ids[BOS_TOKEN], eos_token_id=ids[EOS_TOKEN],
                    pad_token_id=ids[PAD_TOKEN])
  for name, data in (("tokenizer_config.json", config),
                     ("generation_config.json", generation)):
    (out / name).write_text(json.dumps(data, indent=2) + "\n",
                            encoding="utf-8")
  return models.Tokenizer.from_dir(out)


# -------------------------------------------------------------------- task
def _check_fits(tokenizer, problems: dict, max_prompt_length: int,
                max_answer_length: int) -> None:
  """Raises, naming the longest, if a prompt or a solution does not fit."""
  for what, limit, extra, text_of in (
      ("prompt", max_prompt_length, 0, lambda p: p.question),
      ("solution", max_answer_length, 1, lambda p: p.solution)):
    add = what == "prompt"  # the prompt gets BOS, the solution EOS
    longest, where = 0, None
    for split, items in problems.items():
      encoded = tokenizer.backend.encode_batch(
          [text_of(p) for p in items], add_special_tokens=add)
      for p, e in zip(items, encoded):
        if len(e.ids) + extra > longest:
          longest, where = len(e.ids) + extra, (split, p)
    if longest > limit:
      split, p = where
      name = f"max_{what if what == 'prompt' else 'answer'}_length"
      raise ValueError(
          f"The longest {what} ({split} split) needs {longest} tokens"
          f"{' with EOS' if extra else ''} but {name}={limit}; raise "
          f"{name} or use fewer operations. It is:\n{text_of(p)}")


def default_tokenizer_dir(**key) -> str:
  """Where :func:`make_task` keeps the tokenizer it trains when given no
  ``tokenizer_dir``: ``$TSEARCH_CACHE`` (default ``~/.cache/tsearch``)
  ``/word_problems/<hash of the split and tokenizer options>``, so equal
  options share one tokenizer and different ones never mix."""
  root = os.environ.get("TSEARCH_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "tsearch")
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
  return os.path.join(root, "word_problems", digest.hexdigest()[:16])


def make_task(*, seed: int = 0, tokenizer_dir=None, num_train: int = 20_000,
              num_validation: int = 500, num_test: int = 1_000,
              train_ops: tuple[int, int] = (2, 4),
              test_ops: tuple[int, int] = (5, 8), distractors: bool = True,
              vocab_size: int = 768, max_prompt_length: int = 256,
              max_answer_length: int = 256,
              max_value: int = MAX_VALUE, num_unlabeled: int = 0,
              unlabeled_ops: tuple[int, int] | None = None,
              style: str = "plain") -> FreeTextTask:
  """The ``word_problems`` :class:`FreeTextTask` of :func:`splits`.

  Trains the tokenizer on the train split into ``tokenizer_dir`` unless the
  directory already holds a ``tokenizer.json`` (then it is loaded as is:
  delete it to retrain after changing the seed or sizes; byte-level BPE
  encodes any text either way). Without ``tokenizer_dir`` it is
  :func:`default_tokenizer_dir` of the options that decide the tokenizer. Scored by :func:`score`; steps end at
  ``"\\n"``; the prompt is the question (BOS first).

  Raises:
    ValueError: a prompt or a reference solution does not fit
      ``max_prompt_length`` / ``max_answer_length`` (the message shows the
      longest).
  """
  import models  # pylint: disable=g-import-not-at-top
  if tokenizer_dir is None:
    tokenizer_dir = default_tokenizer_dir(
        seed=seed, num_train=num_train, num_validation=num_validation,
        num_test=num_test, train_ops=list(train_ops),
        test_ops=list(test_ops), distractors=distractors,
        vocab_size=vocab_size, max_value=max_value,
        # (plain keeps the directories made before styles existed)
        **({} if style == "plain" else {"style": style}))
  problems = splits(seed, num_train=num_train, num_validation=num_validation,
                    num_test=num_test, train_ops=train_ops, test_ops=test_ops,
                    distractors=distractors, max_value=max_value,
                    num_unlabeled=num_unlabeled, unlabeled_ops=unlabeled_ops,
                    style=style)
  if os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
    tokenizer = models.Tokenizer.from_dir(tokenizer_dir)
  else:
    tokenizer = train_tokenizer(problems["train"], tokenizer_dir,
                                vocab_size=vocab_size)
  _check_fits(tokenizer, problems, max_prompt_length, max_answer_length)
  return FreeTextTask(name="word_problems", tokenizer=tokenizer,
                      problems=problems, score_fn=score,
                      max_prompt_length=max_prompt_length,
                      max_answer_length=max_answer_length,
                      vocab_size=max(int(vocab_size), tokenizer.vocab_size),
                      answer_fn=final_answer)
