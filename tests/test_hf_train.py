"""Search-and-learn, evaluation, resume and export over loaded Hugging Face
checkpoints (tests/goldens: tiny random Qwen2.5 and Gemma 3 models)."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from models import hf
from train import config as config_lib
from train import evaluate
from train import export as export_lib
from train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDENS = os.path.join(REPO, "tests", "goldens")


def _config(family="qwen2", warm=1, search=3):
  c = config_lib.load_config_file(os.path.join(REPO, "configs",
                                               "hf_tiny.py"))
  c.model.checkpoint = os.path.join(GOLDENS, family)
  c.batch_size = 8
  c.warm_start.steps = warm
  c.search.update(steps=search, num_simulations=4, num_children=2,
                  capacity=8)
  c.checkpoint.every_steps = 2
  c.log_every_steps = 1
  c.progress_bar = False
  c.eval.summary = False
  return c


def _flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(x)
          for path, x in jax.tree_util.tree_flatten_with_path(
              jax.device_get(tree))[0]}


@pytest.fixture(scope="module")
def qwen_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("qwen_run"))
  config = _config()
  final = loop.train(config, workdir)
  return config, workdir, final


def test_search_and_learn_changes_the_loaded_params(qwen_run):
  config, workdir, final = qwen_run
  assert np.isfinite(final["loss"]) and "search/solve_rate" in final
  _, _, trained, step = loop.latest_params(config, workdir)
  assert step == 4
  _, start = hf.load(config.model.checkpoint)
  a, b = _flat(trained), _flat(start)
  assert a.keys() == b.keys()
  assert "value_head/kernel" in a  # the value head keeps its name
  np.testing.assert_array_equal(b["value_head/kernel"], 0.0)
  changed = [k for k in a if not np.array_equal(a[k], b[k])]
  assert "layers/0/self_attn/q_proj/kernel" in changed
  assert "value_head/kernel" in changed
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["checkpoint"] == config.model.checkpoint


def test_resume_equals_the_uninterrupted_run(qwen_run, tmp_path,
                                             monkeypatch, capsys):
  config, workdir, _ = qwen_run
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))

  def no_read(*args, **kwargs):
    raise AssertionError("a resumed run must not read the HF weights")
  monkeypatch.setattr(hf, "load_params", no_read)
  loop.train(config, resumed)
  assert "Resumed from step 2" in capsys.readouterr().out
  _, _, after, step = loop.latest_params(config, resumed)
  _, _, straight, _ = loop.latest_params(config, workdir)
  assert step == 4
  a, b = _flat(after), _flat(straight)
  for k in a:  # the trained params won over the HF weights
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_evaluate_a_run_and_the_pretrained_weights(qwen_run):
  config, workdir, _ = qwen_run
  methods = evaluate.parse_methods("mcts:2")
  rows = evaluate.evaluate_checkpoints(
      config, workdir, [(None, 2), (None, None)], methods=methods,
      num_problems=8, progress=False)
  assert [(r["stage"], r["step"], r["algo"]) for r in rows] == [
      ("search_and_learn", 2, "mcts"), ("search_and_learn", 4, "mcts")]
  assert all(set(r) == set(evaluate.ROW_FIELDS) for r in rows)
  base = evaluate.evaluate_checkpoints(
      config, None, [(None, None)], methods=methods, num_problems=8,
      progress=False)
  assert [(r["stage"], r["step"], r["algo"]) for r in base] == [
      ("pretrained", 0, "mcts")]
  assert all(r["verifier_in_search"] for r in rows + base)
  for r in rows + base:
    assert 0.0 <= r["solve_rate"] <= 1.0 and r["model_calls"] > 0
    assert r["num_problems"] == 8 and r["attempts_mean"] == 1.0


def test_export_loads_back_as_the_trained_params(qwen_run, tmp_path):
  config, workdir, _ = qwen_run
  out = str(tmp_path / "export")
  assert export_lib.export(config, workdir, out) == 4
  _, _, trained, _ = loop.latest_params(config, workdir)
  cfg, loaded = hf.load(out)
  a, b = _flat(trained), _flat(loaded)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert cfg.vocab_size == 768
  for name in ("tokenizer.json", "tokenizer_config.json",
               "generation_config.json", hf.VALUE_HEAD_FILE):
    assert os.path.exists(os.path.join(out, name)), name


def test_llama3_search_and_learn_in_bfloat16(tmp_path):
  # Llama 3's tokenizer writes numbers in groups of up to 3 digits: prompts
  # hold "365"-style tokens, answers one token per digit.
  config = _config("llama3", warm=0, search=1)
  config.search.num_simulations = 2
  config.model.dtype = "bfloat16"
  final = loop.train(config, str(tmp_path))
  assert np.isfinite(final["loss"])
  _, fns, trained, _ = loop.latest_params(config, str(tmp_path))
  assert fns.config.tie_embeddings and fns.config.param_dtype == "bfloat16"
  _, start = hf.load(config.model.checkpoint, dtype="bfloat16")
  a, b = _flat(trained), _flat(start)
  assert a["embed_tokens/embedding"].dtype == b[
      "embed_tokens/embedding"].dtype
  assert not np.array_equal(a["embed_tokens/embedding"],
                            b["embed_tokens/embedding"])


def test_fsdp_loads_each_parameter_onto_its_shards(tmp_path):
  config = _config()
  config.parallel.fsdp = True
  config.search.replay_size = 0
  _, _, state, _, _, _ = loop.build(config, str(tmp_path))
  emb = state.params["embed_tokens"]["embedding"]  # [768, 64]
  assert emb.sharding.spec == jax.sharding.PartitionSpec(None, "data")
  assert emb.addressable_shards[0].data.shape == (768, 64 // 8)
  _, want = hf.load(config.model.checkpoint)
  np.testing.assert_array_equal(np.asarray(emb),
                                want["embed_tokens"]["embedding"])
  _, _, abstract, _, _, _ = loop.build(config, str(tmp_path), restoring=True)
  mu = abstract.opt_state[1][0].mu["embed_tokens"]["embedding"]
  assert isinstance(mu, jax.ShapeDtypeStruct)
  assert mu.sharding.spec == jax.sharding.PartitionSpec(None, "data")


def _bad(config, match):
  with pytest.raises(ValueError, match=match):
    config_lib.validate_config(config)
    loop.setup_task(config)


def test_errors_name_what_is_wrong(tmp_path):
  c = _config()
  c.model.checkpoint = str(tmp_path / "nowhere")
  _bad(c, "is not a directory")
  (tmp_path / "empty").mkdir()
  c.model.checkpoint = str(tmp_path / "empty")
  _bad(c, "has no config.json")

  small = tmp_path / "small_vocab"
  shutil.copytree(os.path.join(GOLDENS, "qwen2"), small)
  raw = json.loads((small / "config.json").read_text())
  raw["vocab_size"] = 600  # the tokenizer has 653 tokens
  (small / "config.json").write_text(json.dumps(raw))
  c = _config()
  c.model.checkpoint = str(small)
  _bad(c, "tokenizer has 653 tokens but the model's embedding has only 600")

  c = _config()
  c.model.max_seq_len = 24
  _bad(c, r"need more than the model's context.*model.max_seq_len=24")
  c.model.max_seq_len = 4096
  _bad(c, "max_position_embeddings=128")
  c = _config()
  c.data.source = "tfds"
  _bad(c, "data.source=generated")
  c = _config()
  c.model.chat_template = False
  _bad(c, "model.system_prompt.*chat_template=True")
  c = _config()
  c.model.checkpoint = ""
  _bad(c, "model.chat_template.*applies to a loaded model")
  c = _config()
  c.parallel.model = 3
  _bad(c, "must divide the 4 heads and 2 KV heads")


def test_evaluate_without_workdir_needs_a_checkpoint():
  c = _config()
  c.model.checkpoint = ""
  c.model.chat_template = False
  c.model.system_prompt = ""
  with pytest.raises(ValueError, match="--workdir is required.*"
                     "model.checkpoint"):
    evaluate.evaluate_checkpoints(c, None, [(None, None)],
                                  methods=[("greedy", 1)])
  flags = dict(config=_config(), stages=[], steps=["3"], step=None)
  with pytest.raises(ValueError, match="--steps pick checkpoints of a run"):
    evaluate.check_no_workdir_flags(flags)
