"""GSM8K files, splits, TFDS dataset, prompts and the check command."""
import json

import pytest

from tsearch import data as data_lib
from tsearch import text_data
from tsearch.tasks import check
from tsearch.tasks import gsm8k
from tsearch.tasks import math_answers


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("gsm8k_data")
  assert data_lib.main(["build", "gsm8k", "--data_dir", str(d)]) == 0  # the CLI
  return str(d)


def _records(data_dir, split):
  source = data_lib.data_source("gsm8k", data_dir, split)
  return source.__getitems__(list(range(len(source))))


def test_tfds_splits(data_dir):
  test = _records(data_dir, "test")
  assert len(test) == 1319
  official = [json.loads(line) for line in open(gsm8k.data_path("test.jsonl"))]
  assert [r["question"].decode() for r in test] == [o["question"] for o in official]
  train, val = _records(data_dir, "train"), _records(data_dir, "validation")
  assert (len(train), len(val)) == (6973, 500)
  train_idx = {int(r["index"]) for r in train}
  val_idx = {int(r["index"]) for r in val}
  assert not train_idx & val_idx and train_idx | val_idx == set(range(7473))
  assert not {r["question"] for r in train} & {r["question"] for r in val}
  assert text_data.load_build_options("gsm8k", data_dir) == dict(
      task="gsm8k", seed=0, num_validation=500)


def test_rebuild_with_other_options_is_refused(data_dir):
  with pytest.raises(ValueError, match="already holds a gsm8k dataset"):
    data_lib.build("gsm8k", data_dir, num_validation=10)
  with pytest.raises(ValueError, match="only --seed and --num_validation"):
    data_lib.build("gsm8k", data_dir, num_train=10)


def test_check_command_on_tfds(data_dir, capsys):
  assert check.main(["gsm8k", "--split", "test", "--data_dir", data_dir]) == 0
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert last == "check task=gsm8k split=test n=1319 gold_reward=1.000 wrong_reward=0.000"


def test_check_all_of_train_and_test():
  for split, n in (("train", 6973), ("validation", 500), ("test", 1319)):
    result = check.check(check.gsm8k_references(gsm8k.load_split(split)), kind="gsm8k")
    assert (result.n, result.gold_reward, result.wrong_reward) == (n, 1.0, 0.0), (
        split, result.failures)
    assert set(result.by_corruption) == set(check.CORRUPTIONS)


def test_splits_from_the_shipped_files():
  train, val = gsm8k.load_split("train"), gsm8k.load_split("validation")
  assert len(train) + len(val) == 7473
  assert not {p.index for p in train} & {p.index for p in val}
  other = gsm8k.load_split("validation", seed=1)
  assert {p.index for p in other} != {p.index for p in val}
  with pytest.raises(ValueError, match="Unknown GSM8K split"):
    gsm8k.load_split("dev")


def test_targets_and_steps():
  p = gsm8k.load_split("test")[0]
  assert p.answer == "18" and "<<" in p.solution
  target = gsm8k.target_text(p)
  assert "<<" not in target and target.endswith("#### 18")
  assert gsm8k.target_text(p, keep_calculator=True) == p.solution.strip()
  assert gsm8k.strip_calculator("2*3=<<2*3=6>>6") == "2*3=6"
  steps = gsm8k.solution_steps(target)
  assert steps[-1] == "#### 18" and len(steps) == 3
  assert math_answers.score(target, p.answer) == 1.0


def test_prompts():
  val_test = {p.question for p in gsm8k.load_split("validation") + gsm8k.load_split("test")}
  shots = gsm8k.fewshot_examples(8, seed=3)
  assert shots == gsm8k.fewshot_examples(8, seed=3) != gsm8k.fewshot_examples(8, seed=4)
  assert not {p.question for p in shots} & val_test
  prompt = gsm8k.fewshot_prompt("How many?", k=2, seed=3)
  assert prompt.startswith(f"Question: {shots[0].question}\nAnswer: ")
  assert prompt.endswith("\n\nQuestion: How many?\nAnswer:") and "<<" not in prompt
  assert "<<" in gsm8k.fewshot_prompt("How many?", k=8, keep_calculator=True)
  messages = gsm8k.chat_messages("How many?", k=2, seed=3)
  assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 2 + ["user"]
  assert messages[-1]["content"] == "How many?"
  assert messages[2]["content"] == gsm8k.target_text(shots[0])
  assert [m["role"] for m in gsm8k.chat_messages("Q", system=None)] == ["user"]


def test_chat_messages_render_with_a_real_template():
  import models  # pylint: disable=g-import-not-at-top
  tok = models.Tokenizer.from_dir("tests/goldens/qwen2")
  text = tok.apply_chat_template(gsm8k.chat_messages("How many?", k=1),
                                 add_generation_prompt=True)
  assert "How many?" in text and text.rstrip().endswith("assistant")


# ---------------------------------------------------------------- bad input
def test_malformed_jsonl_line_is_named(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q2", answer}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
    gsm8k.load_file(str(path))
  path.write_text('{"question": "q"}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:1: missing or non-string field\(s\) \['answer'\]"):
    gsm8k.load_file(str(path))
  path.write_text('{"question": "q", "answer": "no final line"}\n')
  with pytest.raises(ValueError, match="exactly one '#### <answer>' line"):
    gsm8k.load_file(str(path))
  assert check.main(["gsm8k", "--file", str(path)]) == 2


def test_missing_files_are_named(tmp_path, capsys):
  missing = str(tmp_path / "nope.jsonl")
  with pytest.raises(FileNotFoundError, match="No data file at .*nope.jsonl"):
    gsm8k.load_file(missing)
  assert check.main(["math", "--file", missing]) == 2
  assert "nope.jsonl" in capsys.readouterr().err
  assert check.main(["math"]) == 2
  assert "needs --file" in capsys.readouterr().err
  assert check.main(["gsm8k", "--split", "test", "--data_dir", str(tmp_path)]) == 2
  assert "python -m tsearch.data build gsm8k" in capsys.readouterr().err


MATH_ROWS = [
    (r"We have $r = 3$ and $\theta = \frac{\pi}{2}.$ So the point is "
     r"$\boxed{\left( 3, \frac{\pi}{2} \right)}.$", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"$\frac{3}{6}+\frac{2}{6}=\boxed{\frac{5}{6}}$.", r"\frac{5}{6}"),
    (r"So $x \in \boxed{(-2,2)}$.", "(-2,2)"),
    (r"$\sqrt{8}/4$ is $\boxed{\frac{\sqrt{2}}{2}}$.", r"\frac{\sqrt{2}}{2}"),
    (r"It is a $\boxed{\text{Monday}}$.", r"\text{Monday}"),
    (r"The side is $\boxed{5\text{ cm}}$ long.", r"5\text{ cm}"),
    (r"The angle is $\boxed{30^\circ}$.", r"30^\circ"),
    (r"$(a,b) = \boxed{(2,-1)}$.", "(2,-1)"),
    (r"It is $\boxed{25\%}$.", r"25\%"),
    (r"The set is $\boxed{\{1,2,3\}}$.", r"\{1,2,3\}"),
]


def test_check_command_on_a_math500_file(tmp_path, capsys):
  path = tmp_path / "math500.jsonl"
  path.write_text("".join(json.dumps(dict(problem="p", solution=s, answer=a, level=1)) + "\n"
                          for s, a in MATH_ROWS))
  assert check.main(["math", "--split", "test", "--file", str(path)]) == 0
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert last == "check task=math split=test n=10 gold_reward=1.000 wrong_reward=0.000"
  path.write_text(json.dumps(dict(problem="p", solution=r"\boxed{3}", answer="4")) + "\n")
  assert check.main(["math", "--split", "x", "--file", str(path)]) == 1
  assert "gold_reward=0.000" in capsys.readouterr().out
