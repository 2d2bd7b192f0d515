"""models.tokenizer against the goldens transformers wrote (no torch here).

tests/goldens/<family>/reference.json holds transformers 5's encodings,
decodings and chat renderings of tiny Llama 3, Qwen2.5, Qwen3 and Gemma 3
tokenizers (tools/make_goldens.py); models.tokenizer.Tokenizer must give the
same ones from the same files.
"""
import doctest
import json
import pathlib
import shutil

import jinja2
import pytest

from models import tokenizer as tokenizer_lib
from models.tokenizer import Tokenizer

GOLDENS = pathlib.Path(__file__).resolve().parent / "goldens"
FAMILIES = ("llama3", "qwen2", "qwen3", "gemma3")


def _reference(family):
  return json.loads((GOLDENS / family / "reference.json").read_text())


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
  return request.param


@pytest.fixture(scope="module")
def tok(family):
  return Tokenizer.from_dir(GOLDENS / family)


@pytest.fixture(scope="module")
def ref(family):
  return _reference(family)


def _cases(ref):
  cases = ref["tokenization_cases"]
  assert len(cases) >= 10
  return cases


@pytest.mark.parametrize("add", [False, True])
def test_encode_matches_transformers(tok, ref, add):
  for case in _cases(ref):
    assert tok.encode(case["text"], add_special_tokens=add) == (
        case[f"ids_add_special_{add}"]), case["text"]


@pytest.mark.parametrize("add", [False, True])
def test_decode_matches_transformers(tok, ref, add):
  for case in _cases(ref):
    ids = case[f"ids_add_special_{add}"]
    assert tok.decode(ids) == case[f"decode_add_special_{add}"], case["text"]
    assert tok.decode(ids, skip_special_tokens=True) == (
        case[f"decode_skip_add_special_{add}"]), case["text"]


def test_bos_is_added_as_the_family_does(tok, ref, family):
  with_bos = family in ("llama3", "gemma3")
  assert (tok.bos_id is not None) == with_bos
  assert tok.bos_id == ref["bos_token_id"]
  assert tok.bos_token == ref["bos_token"]
  assert tok.eos_token == ref["eos_token"]
  ids = tok.encode("Betty has 100 dollars")
  assert (ids[0] == tok.bos_id) == with_bos
  assert tok.encode("Betty has 100 dollars", add_special_tokens=False) == (
      ids[1:] if with_bos else ids)
  assert tok.encode("") == ([tok.bos_id] if with_bos else [])


def test_prompts_encode_as_in_the_logits_reference(tok, ref):
  # The model parity test feeds these ids: they must be our encodings too.
  import numpy as np  # pylint: disable=g-import-not-at-top
  npz = np.load(GOLDENS / ref["family"] / "reference.npz")
  for row, (prompt, mask) in enumerate(zip(ref["prompts"],
                                           npz["attention_mask"])):
    ids = tok.encode(prompt)
    assert int(mask.sum()) == len(ids)
    assert npz["input_ids"][row, :len(ids)].tolist() == ids


def test_token_bytes_round_trip(tok, ref):
  table = tok.token_bytes()
  assert len(table) == tok.vocab_size
  for case in _cases(ref):
    ids = tok.encode(case["text"], add_special_tokens=False)
    assert b"".join(table[i] for i in ids) == case["text"].encode(), (
        case["text"])


def test_token_bytes_details(tok, family):
  table = tok.token_bytes()
  assert all(isinstance(b, bytes) for b in table)
  # Every byte value is spelled by some single token (byte-level alphabet or
  # <0xNN> byte fallback), so any text can be spelled in bytes.
  singles = {b for b in table if len(b) == 1}
  assert singles == {bytes([i]) for i in range(256)}
  newline2 = tok.encode("\n\n", add_special_tokens=False)
  assert b"".join(table[i] for i in newline2) == b"\n\n"
  if family == "gemma3":
    assert table[tok.token_to_id("<0x0A>")] == b"\n"
    assert table[tok.token_to_id("<0xF0>")] == b"\xf0"
    assert table[tok.token_to_id("<start_of_turn>")] == b"<start_of_turn>"
    spaced = [t for t in range(tok.vocab_size)
              if tok.id_to_token(t).startswith("▁")
              and len(tok.id_to_token(t)) > 1]
    assert spaced and all(table[t].startswith(b" ") for t in spaced)
  else:
    assert table[tok.token_to_id("Ċ")] == b"\n"
    assert table[tok.token_to_id("Ġ")] == b" "
    assert table[tok.eos_ids[0]] == tok.id_to_token(tok.eos_ids[0]).encode()
  # A model's padded embedding rows (Qwen) get empty byte strings.
  padded = tok.token_bytes(tok.vocab_size + 5)
  assert padded[:tok.vocab_size] == table and padded[-5:] == [b""] * 5
  with pytest.raises(ValueError, match="below the tokenizer's vocab_size"):
    tok.token_bytes(tok.vocab_size - 1)


def test_chat_renderings_match_transformers(tok, ref):
  renderings = ref["chat_renderings"]
  assert len(renderings) >= 6
  for r in renderings:
    text = tok.apply_chat_template(
        r["messages"], add_generation_prompt=r["add_generation_prompt"],
        **r["template_kwargs"])
    assert text == r["text"]


def test_chat_token_ids_match_transformers(tok, ref):
  spec = ref["chat_tokenized"]
  messages = ref["chat_renderings"][2 * spec["conversation"]]["messages"]
  ids = tok.apply_chat_template(
      messages, add_generation_prompt=spec["add_generation_prompt"],
      tokenize=True, **spec["template_kwargs"])
  assert ids == spec["ids"]
  # Special tokens in the rendering are single ids, and no second BOS.
  if tok.bos_id is not None:
    assert ids.count(tok.bos_id) == 1 and ids[0] == tok.bos_id


def test_eos_ids_come_from_generation_config(tok, ref, family):
  generation = json.loads(
      (GOLDENS / family / "generation_config.json").read_text())
  assert list(tok.eos_ids) == generation["eos_token_id"]
  assert tok.eos_ids == tuple(ref["eos_token_ids"])
  assert tok.token_to_id(tok.eos_token) in tok.eos_ids
  want = {"llama3": ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
          "qwen2": ("<|im_end|>", "<|endoftext|>"),
          "qwen3": ("<|im_end|>", "<|endoftext|>"),
          "gemma3": ("<eos>", "<end_of_turn>")}[family]
  assert tuple(tok.id_to_token(i) for i in tok.eos_ids) == want


def test_pad_and_vocab(tok, ref, family):
  assert tok.vocab_size == ref["vocab_size_tokenizer"]
  pad = {"llama3": None, "qwen2": "<|endoftext|>", "qwen3": "<|endoftext|>",
         "gemma3": "<pad>"}[family]
  assert tok.pad_id == (None if pad is None else tok.token_to_id(pad))


def test_qwen3_think_tokens_are_not_special():
  tok = Tokenizer.from_dir(GOLDENS / "qwen3")
  ids = tok.encode("<think>a</think>b<|im_end|>")
  assert tok.token_to_id("<think>") in ids
  assert tok.decode(ids, skip_special_tokens=True) == "<think>a</think>b"


def test_digit_splitting_follows_the_family():
  llama = Tokenizer.from_dir(GOLDENS / "llama3")
  qwen = Tokenizer.from_dir(GOLDENS / "qwen2")
  # Qwen splits digits one by one; Llama 3 pre-splits runs of up to 3.
  assert len(qwen.encode("12345")) == 5
  pieces = [llama.token_bytes()[i] for i in
            llama.encode("12345", add_special_tokens=False)]
  assert b"".join(pieces) == b"12345"
  assert all(len(p) <= 3 for p in pieces) and len(pieces) < 5


def test_llama3_date_defaults_to_today():
  import datetime  # pylint: disable=g-import-not-at-top
  tok = Tokenizer.from_dir(GOLDENS / "llama3")
  before = datetime.datetime.now().strftime("%d %b %Y")
  text = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
  after = datetime.datetime.now().strftime("%d %b %Y")
  assert f"Today Date: {before}\n" in text or f"Today Date: {after}\n" in text


def test_template_errors_surface():
  tok = Tokenizer.from_dir(GOLDENS / "gemma3")
  with pytest.raises(jinja2.TemplateError, match="must alternate"):
    tok.apply_chat_template([{"role": "assistant", "content": "x"}])
  with pytest.raises(ValueError, match="empty conversation"):
    tok.apply_chat_template([])


def test_tojson_does_not_escape_html():
  tok = Tokenizer.from_dir(GOLDENS / "qwen2")
  tools = [{"type": "function",
            "function": {"name": "add", "description": "a < b & 数"}}]
  text = tok.apply_chat_template([{"role": "user", "content": "Hi"}],
                                 tools=tools)
  assert '"description": "a < b & 数"' in text


# -- Other file layouts --------------------------------------------------------


def _copy(family, tmp_path):
  dst = tmp_path / family
  dst.mkdir()
  for name in ("tokenizer.json", "tokenizer_config.json",
               "generation_config.json"):
    shutil.copy(GOLDENS / family / name, dst / name)
  return dst


def _edit_config(directory, **changes):
  path = directory / "tokenizer_config.json"
  config = json.loads(path.read_text())
  for k, v in changes.items():
    if v is _DELETE:
      config.pop(k)
    else:
      config[k] = v
  path.write_text(json.dumps(config))
  return config


_DELETE = object()


def test_accepts_a_file_path(tmp_path):
  tok = Tokenizer.from_dir(GOLDENS / "qwen2" / "tokenizer.json")
  assert tok.path == GOLDENS / "qwen2"
  assert tok.eos_ids == Tokenizer.from_dir(GOLDENS / "qwen2").eos_ids


def test_named_chat_templates(tmp_path):
  d = _copy("qwen2", tmp_path)
  template = json.loads((d / "tokenizer_config.json").read_text())[
      "chat_template"]
  _edit_config(d, chat_template=[
      {"name": "default", "template": template},
      {"name": "tool_use", "template": "TOOLS {{ tools | length }}"},
      {"name": "short", "template": "{{ messages[0]['content'] }}!"}])
  tok = Tokenizer.from_dir(d)
  messages = [{"role": "user", "content": "Hi"}]
  assert tok.apply_chat_template(messages) == (
      Tokenizer.from_dir(GOLDENS / "qwen2").apply_chat_template(messages))
  assert tok.apply_chat_template(messages, chat_template="short") == "Hi!"
  assert tok.apply_chat_template(messages, tools=[{}, {}]) == "TOOLS 2"
  _edit_config(d, chat_template=[{"name": "short", "template": "x"}])
  with pytest.raises(ValueError, match="none is named 'default'"):
    Tokenizer.from_dir(d).apply_chat_template(messages)
  _edit_config(d, chat_template=[{"name": "short"}])
  with pytest.raises(ValueError, match='"template": str'):
    Tokenizer.from_dir(d)


def test_chat_template_jinja_file_wins(tmp_path):
  d = _copy("gemma3", tmp_path)
  (d / "chat_template.jinja").write_text(
      "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{% endfor %}"
      "{% if add_generation_prompt %}{{ eos_token }}{% endif %}")
  tok = Tokenizer.from_dir(d)
  assert tok.apply_chat_template([{"role": "user", "content": "x"}],
                                 add_generation_prompt=True) == (
                                     "<bos>[user]<eos>")


def test_add_bos_token_false_drops_the_bos(tmp_path):
  d = _copy("gemma3", tmp_path)
  _edit_config(d, add_bos_token=False, add_eos_token=True)
  tok = Tokenizer.from_dir(d)
  ids = tok.encode("a b")
  assert ids[0] != tok.bos_id and ids[-1] == tok.token_to_id("<eos>")
  assert ids[:-1] == tok.encode("a b", add_special_tokens=False)


def test_eos_without_generation_config(tmp_path):
  d = _copy("llama3", tmp_path)
  (d / "generation_config.json").unlink()
  tok = Tokenizer.from_dir(d)
  assert tok.eos_ids == (tok.token_to_id("<|eot_id|>"),)


def test_added_token_dicts_in_config(tmp_path):
  d = _copy("gemma3", tmp_path)
  _edit_config(d, bos_token={"__type": "AddedToken", "content": "<bos>",
                             "lstrip": False})
  assert Tokenizer.from_dir(d).bos_id == 2


# -- Errors --------------------------------------------------------------------


def test_error_missing_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    Tokenizer.from_dir(tmp_path / "nope")


def test_error_no_tokenizer_json(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError,
                     match=r"No tokenizer\.json in .*Download"):
    Tokenizer.from_dir(tmp_path)
  (tmp_path / "tokenizer.model").write_bytes(b"\0")
  with pytest.raises(FileNotFoundError, match="save_pretrained"):
    Tokenizer.from_dir(tmp_path)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json",
                                  "generation_config.json"])
def test_error_malformed_json(tmp_path, name):
  d = _copy("qwen3", tmp_path)
  (d / name).write_text('{"eos_token": "<|im_end|>",\n  oops}')
  with pytest.raises(ValueError, match=rf"{name} is not valid JSON: .* line "
                     "2 column 3"):
    Tokenizer.from_dir(d)


def test_error_json_that_is_no_tokenizer(tmp_path):
  d = _copy("qwen3", tmp_path)
  (d / "tokenizer.json").write_text('{"model": 3}')
  with pytest.raises(ValueError, match="not a tokenizer the tokenizers"):
    Tokenizer.from_dir(d)


def test_error_no_chat_template(tmp_path):
  d = _copy("llama3", tmp_path)
  _edit_config(d, chat_template=_DELETE)
  tok = Tokenizer.from_dir(d)
  assert tok.encode("hi") == Tokenizer.from_dir(GOLDENS / "llama3").encode(
      "hi")
  with pytest.raises(ValueError, match=r"tokenizer_config\.json has no "
                     "chat_template.*base model"):
    tok.apply_chat_template([{"role": "user", "content": "hi"}])
  # An explicit template still works.
  assert tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                 chat_template="{{ messages[0].content }}"
                                 ) == "hi"


def test_error_eos_not_in_vocabulary(tmp_path):
  d = _copy("qwen2", tmp_path)
  _edit_config(d, eos_token="<|eot|>")
  with pytest.raises(ValueError, match=r"tokenizer_config\.json: eos_token "
                     r"'<\|eot\|>' is not in the vocabulary"):
    Tokenizer.from_dir(d)


def test_error_generation_eos_out_of_range(tmp_path):
  d = _copy("qwen2", tmp_path)
  (d / "generation_config.json").write_text('{"eos_token_id": [652, 151645]}')
  with pytest.raises(ValueError, match=r"generation_config\.json: "
                     "eos_token_id holds 151645"):
    Tokenizer.from_dir(d)


def test_error_bad_chat_template_type(tmp_path):
  d = _copy("qwen2", tmp_path)
  _edit_config(d, chat_template=7)
  with pytest.raises(ValueError, match="chat_template is a int"):
    Tokenizer.from_dir(d)


def test_docstring_examples(monkeypatch):
  monkeypatch.chdir(GOLDENS.parent.parent)
  result = doctest.testmod(tokenizer_lib)
  assert result.attempted >= 5 and result.failed == 0


def test_exported_from_models():
  import models  # pylint: disable=g-import-not-at-top
  assert models.Tokenizer is Tokenizer
