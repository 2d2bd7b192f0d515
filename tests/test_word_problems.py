"""Synthetic word problems: determinism, exact arithmetic, disjoint splits,
the BPE tokenizer, and the FreeTextTask's verifier."""
import dataclasses
import re

import numpy as np
import pytest

from tsearch.tasks import word_problems as wp

LINE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b,
       "*": lambda a, b: a * b}
WORD_FACTORS = {"twice": 2, "half": 2, "third": 3, "quarter": 4, "fifth": 5,
                "sixth": 6, "seventh": 7, "eighth": 8, "ninth": 9}
SIZES = dict(num_train=300, num_validation=20, num_test=20)


@pytest.fixture(scope="module")
def data():
  return wp.splits(0, **SIZES)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
  return wp.make_task(seed=0, tokenizer_dir=tmp_path_factory.mktemp("tok"),
                      **SIZES)


def check_solution(problem):
  """Recomputes every line; returns the results in order."""
  lines = problem.solution.split("\n")
  assert lines[-1] == f"#### {problem.answer}"
  given = {int(x) for x in re.findall(r"\d+", problem.question)}
  given |= {k for w, k in WORD_FACTORS.items() if w in problem.question}
  results = []
  for line in lines[:-1]:
    found = LINE.findall(line)
    assert len(found) == 1, line
    a, op, b, c = found[0]
    a, b, c = int(a), int(b), int(c)
    if op == "/":
      assert a % b == 0 and a // b == c, line
    else:
      assert OPS[op](a, b) == c, line
    assert 2 <= c <= 999 and a >= 2 and b >= 2, line
    # Operands are numbers of the question or earlier results.
    assert {a, b} <= given | set(results), (line, problem.question)
    results.append(c)
  assert results and str(results[-1]) == problem.answer
  return results


def test_determinism():
  a = wp.generate(0, 30, min_ops=2, max_ops=6, distractors=True)
  assert a == wp.generate(0, 30, min_ops=2, max_ops=6, distractors=True)
  b = wp.generate(1, 30, min_ops=2, max_ops=6, distractors=True)
  assert not {p.question for p in a} & {p.question for p in b}
  assert len({p.question for p in a}) == 30


def test_reference_arithmetic_and_dependencies(data):
  for split, problems in data.items():
    for p in problems:
      results = check_solution(p)
      # Each intermediate result is used by a later line (a chain or DAG
      # that ends in the answer).
      operands = [(int(a), int(b)) for a, _, b, _ in
                  (LINE.findall(l)[0] for l in p.solution.split("\n")[:-1])]
      for i, r in enumerate(results[:-1]):
        assert any(r in ops for ops in operands[i + 1:]), (split, p.solution)


def test_distractors_only_add_unused_numbers():
  plain = wp.generate(3, 40, min_ops=2, max_ops=5, distractors=False)
  noisy = wp.generate(3, 40, min_ops=2, max_ops=5, distractors=True)
  for p in plain + noisy:
    check_solution(p)

  def unused(p):
    used = {int(x) for x in re.findall(r"\d+", p.solution)}
    return {int(x) for x in re.findall(r"\d+", p.question)} - used
  assert not any(unused(p) for p in plain)
  assert sum(bool(unused(p)) for p in noisy) > 30


def test_quote_style_copies_each_worked_sentence_first():
  """style="quote": the same problems, each line first copies the sentence
  it works out (in the question's order; the question before the line
  that combines counts), then the plain line."""
  kw = dict(min_ops=2, max_ops=8, distractors=True)
  plain = wp.generate(5, 60, **kw)
  quoted = wp.generate(5, 60, style="quote", **kw)
  assert [(p.question, p.answer) for p in plain] == [
      (q.question, q.answer) for q in quoted]
  num_quotes = 0
  for p, q in zip(plain, quoted):
    check_solution(q)
    p_lines, q_lines = p.solution.split("\n"), q.solution.split("\n")
    assert len(p_lines) == len(q_lines) and p_lines[-1] == q_lines[-1]
    at = 0  # quotes follow the question's order
    for pl, ql in zip(p_lines[:-1], q_lines[:-1]):
      assert ql.endswith(pl)
      quote = ql[:len(ql) - len(pl)]
      if not quote:
        continue
      num_quotes += 1
      quote = quote[:-1]
      assert quote[-1] in ".?" and quote in p.question
      found = p.question.find(quote, at)
      assert found >= 0, (quote, p.question)
      at = found + len(quote)
      # The sentence's numbers are what its line computes with.
      a, _, b, _ = LINE.findall(pl)[0]
      assert set(re.findall(r"\d+", quote)) <= {a, b}, (quote, pl)
    # The first line works out a sentence, the question only at the end.
    assert q_lines[0] != p_lines[0]
  assert num_quotes > 200
  with pytest.raises(ValueError, match="style"):
    wp.generate(0, 1, style="quoted")


def test_templates_are_varied():
  for table in (wp._CHAIN, wp._RELATION):
    for kind, templates in table.items():
      assert len(set(templates)) >= 10, kind
  for templates in (wp._INTRO, wp._ASK, wp._ASK_SUM, wp._ASK_DIFF,
                    wp._DISTRACTORS):
    assert len(set(templates)) >= 10


def test_splits(data):
  assert sorted(data) == sorted(wp.SPLIT_NAMES)
  assert [len(data[k]) for k in wp.SPLIT_NAMES] == [300, 20, 20, 20, 20]
  questions = [{p.question for p in data[k]} for k in wp.SPLIT_NAMES]
  assert sum(map(len, questions)) == len(set().union(*questions))
  for k, problems in data.items():
    lo, hi = (5, 8) if k.endswith("_ood") else (2, 4)
    assert all(lo <= wp.num_ops(p) <= hi for p in problems), k
  assert (min(wp.num_ops(p) for p in data["test_ood"])
          > max(wp.num_ops(p) for p in data["train"]))
  # The same seed, the same splits; train's size changes no held-out split.
  again = wp.splits(0, num_train=50, num_validation=20, num_test=20)
  for k in wp.SPLIT_NAMES[1:]:
    assert again[k] == data[k]
  assert again["train"] == data["train"][:50]
  with pytest.raises(ValueError, match="min_ops"):
    wp.generate(0, 1, min_ops=3, max_ops=2)


def test_unlabeled_split_changes_no_other_split(data):
  more = wp.splits(0, **SIZES, num_unlabeled=40, unlabeled_ops=(5, 6))
  assert sorted(more) == sorted(wp.SPLIT_NAMES + ("unlabeled",))
  for k in wp.SPLIT_NAMES:
    assert more[k] == data[k]
  assert len(more["unlabeled"]) == 40
  assert {wp.num_ops(p) for p in more["unlabeled"]} == {5, 6}
  held = set().union(*({p.question for p in data[k]} for k in data))
  assert not held & {p.question for p in more["unlabeled"]}
  # Its default number of operations is the out-of-distribution splits'.
  ops = wp.splits(0, **SIZES, num_unlabeled=40)["unlabeled"]
  assert max(wp.num_ops(p) for p in ops) > 6


def test_tokenizer(data, tmp_path):
  tok = wp.train_tokenizer(data["train"], tmp_path / "a", vocab_size=512)
  wp.train_tokenizer(data["train"], tmp_path / "b", vocab_size=512)
  assert ((tmp_path / "a" / "tokenizer.json").read_bytes()
          == (tmp_path / "b" / "tokenizer.json").read_bytes())
  assert tok.vocab_size == 512 and tok.eos_ids == (2,)
  assert (tok.pad_id, tok.bos_id) == (0, 1)
  for problems in data.values():
    for p in problems:
      for text in (p.question, p.solution):
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
  assert tok.encode("Ann", add_special_tokens=True)[0] == tok.bos_id
  # Digits one by one: no token holds a digit next to anything else.
  for b in tok.token_bytes():
    assert not re.search(rb"\d", b) or re.fullmatch(rb"\d", b), b
  ids = tok.encode("has 120 / 3 = 40", add_special_tokens=False)
  assert [tok.decode([i]) for i in ids if tok.decode([i]).isdigit()] == [
      "1", "2", "0", "3", "4", "0"]


def test_task_verifies_references(task):
  assert task.name == "word_problems"
  assert task.splits == ("train",) + wp.SPLIT_NAMES[1:]
  problems = task.eval_problems(3, split="test") + task.eval_problems(
      3, split="test_ood")
  prompts, _ = task.encode_prompts(problems)
  answers = task.solution_tokens(problems)
  wrong = [dataclasses.replace(p, solution=p.solution.rsplit("#### ", 1)[0]
                               + f"#### {int(p.answer) + 1}")
           for p in problems]
  got = task.verify(np.concatenate([prompts, prompts]),
                    np.concatenate([answers, task.solution_tokens(wrong)]))
  np.testing.assert_array_equal(got, [1.0] * 6 + [0.0] * 6)
  assert wp.final_answer(problems[0].solution) == problems[0].answer


def test_scorers():
  assert wp.score("5 + 3 = 8\n#### 8", "8") == 1.0
  assert wp.score("5 + 3 = 8\n#### 9", "8") == 0.0
  assert wp.score("5 + 3 = 8", "8") == 0.0
  assert wp.score("#### 8\n#### 9", "8") == 0.0
  assert wp.final_answer("#### 8\n#### 8.0") == "8"
  assert wp.final_answer("#### 8\n#### 9") is None


def test_too_long_solution_is_named(task):
  # The directory holds a tokenizer.json, so it is loaded, not retrained.
  with pytest.raises(ValueError, match=r"longest solution \(\w+ split\)"):
    wp.make_task(seed=0, tokenizer_dir=task.tokenizer.path, num_train=20,
                 num_validation=2, num_test=2, max_answer_length=40)


def test_registry_trains_its_tokenizer_once_per_options(tmp_path, monkeypatch):
  """``get_task("word_problems")`` keeps its tokenizer in a cache directory
  named by the options that decide it: the same options load it, others
  get their own."""
  from tsearch.tasks import TEXT_TASK_NAMES, get_task
  assert "word_problems" in TEXT_TASK_NAMES
  monkeypatch.setenv("TSEARCH_CACHE", str(tmp_path))
  a = get_task("word_problems", **SIZES)
  dirs = list((tmp_path / "word_problems").iterdir())
  assert len(dirs) == 1 and (dirs[0] / "tokenizer.json").is_file()
  stamp = (dirs[0] / "tokenizer.json").stat().st_mtime_ns
  b = get_task("word_problems", **SIZES)
  assert (dirs[0] / "tokenizer.json").stat().st_mtime_ns == stamp
  assert a.tokenizer.encode("Ann has 12 apples.") == b.tokenizer.encode(
      "Ann has 12 apples.")
  get_task("word_problems", **dict(SIZES, vocab_size=600))
  assert len(list((tmp_path / "word_problems").iterdir())) == 2
  assert a.vocab.size == 768
  with pytest.raises(ValueError, match="Bad options.*word_problems"):
    get_task("word_problems", num_trian=3)


def test_max_value_bounds_every_quantity():
  problems = wp.generate(3, 60, min_ops=2, max_ops=6, distractors=True,
                         max_value=99)
  for p in problems:
    results = check_solution(p)  # still exact, dependent arithmetic
    assert max(results) <= 99 and int(p.answer) <= 99
    for line in p.solution.split("\n")[:-1]:
      assert all(int(x) <= 99 for x in LINE.findall(line)[0][::2])
  # The default range still draws large numbers.
  big = wp.generate(3, 60, min_ops=2, max_ops=6)
  assert max(int(p.answer) for p in big) > 99
  with pytest.raises(ValueError, match="max_value must be in 30..999"):
    wp.generate(0, 1, max_value=10)
