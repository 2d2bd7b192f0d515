"""The tokenizer and chat template of a local Hugging Face checkpoint.

Reads the files a Hugging Face model directory carries, with no hub, network,
torch or transformers:

* ``tokenizer.json`` (the fast-tokenizer file, read by the ``tokenizers``
  library);
* ``tokenizer_config.json``: the chat template (a string, or a list of
  ``{"name", "template"}``), the bos/eos/pad tokens, ``add_bos_token`` /
  ``add_eos_token``; a ``chat_template.jinja`` file next to it takes priority
  over the template in the config, as in transformers;
* ``generation_config.json``: ``eos_token_id`` (an int or a list), which
  extends the config's eos token (the generation config's ids come first).

Encoding, decoding and chat rendering match transformers 5
(``AutoTokenizer.from_pretrained(path)``); ``tests/test_hf_tokenizer.py``
checks them against the goldens that transformers wrote
(``tools/make_goldens.py``).

Example::

  >>> from models.tokenizer import Tokenizer
  >>> tok = Tokenizer.from_dir("tests/goldens/qwen2")
  >>> ids = tok.encode("12 + 7")
  >>> tok.decode(ids)
  '12 + 7'
  >>> b"".join(tok.token_bytes()[i] for i in ids)
  b'12 + 7'
  >>> tok.eos_ids == (tok.encode("<|im_end|>")[0],
  ...                 tok.encode("<|endoftext|>")[0])
  True
  >>> text = tok.apply_chat_template([{"role": "user", "content": "Hi"}],
  ...                                add_generation_prompt=True)
  >>> text.endswith("user\\nHi<|im_end|>\\n<|im_start|>assistant\\n")
  True
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import tokenizers
from tokenizers import processors

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

# The named special tokens transformers passes to chat templates.
_SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token",
                        "pad_token", "cls_token", "mask_token")
# Names a message's reasoning goes under (transformers copies it to all).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _read_json(path: pathlib.Path) -> Any:
  try:
    text = path.read_text(encoding="utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path} is not UTF-8 text ({e}); it should be the JSON "
                     "file a Hugging Face checkpoint carries.") from e
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(
        f"{path} is not valid JSON: {e.msg} at line {e.lineno} column "
        f"{e.colno}. Fix or re-download the file (it should be the "
        "checkpoint's own, unedited).") from e


def _token_text(value: Any, path: pathlib.Path, name: str) -> str | None:
  """A special token in a config: a string, an AddedToken dict, or null."""
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, Mapping) and isinstance(value.get("content"), str):
    return value["content"]
  raise ValueError(f"{path}: {name} is {value!r}; expected a string, null or "
                   'an {"content": ...} token.')


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character map (ByteLevel's alphabet)."""
  printable = (list(range(ord("!"), ord("~") + 1))
               + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  chars = list(printable)
  n = 0
  for b in range(256):
    if b not in printable:
      printable.append(b)
      chars.append(256 + n)
      n += 1
  return dict(zip(printable, (chr(c) for c in chars)))


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}


def _decoder_types(spec: Mapping[str, Any] | None) -> set[str]:
  if not spec:
    return set()
  types = {spec.get("type")}
  for sub in spec.get("decoders") or ():
    types |= _decoder_types(sub)
  return types


class _GenerationTag(jinja2.ext.Extension):
  """``{% generation %}...{% endgeneration %}``: renders its body as is.

  transformers uses the tag to find the assistant's tokens; rendering is
  unchanged by it.
  """
  tags = {"generation"}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    return jinja2.nodes.CallBlock(
        self.call_method("_render"), [], [], body).set_lineno(lineno)

  def _render(self, caller):
    return caller()


def _raise_exception(message):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None,
            sort_keys=False):
  # As transformers: no HTML escaping (unlike jinja's own tojson).
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                    separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
  return datetime.datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
  """jinja's namespace(), refusing underscore names (as transformers)."""

  def __init__(*args, **kwargs):  # pylint: disable=no-method-argument
    self, args = args[0], args[1:]
    attrs = dict(*args, **kwargs)
    for name in attrs:
      _Namespace._check(name)
    jinja2.utils.Namespace.__init__(self, attrs)

  def __setitem__(self, name, value):
    _Namespace._check(name)
    jinja2.utils.Namespace.__setitem__(self, name, value)

  @staticmethod
  def _check(name):
    if isinstance(name, str) and name.startswith("_"):
      raise jinja2.exceptions.SecurityError(
          "Chat templates cannot store underscore-prefixed attributes on a "
          f"namespace, but got {name!r}.")


def _compile(template: str) -> jinja2.Template:
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True,
      extensions=[_GenerationTag, jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = _strftime_now
  env.globals["dict"] = dict
  env.globals["namespace"] = _Namespace
  return env.from_string(template)


def _plain(value: Any) -> Any:
  """A copy of chat data made of plain JSON types (what templates see)."""
  if value is None or type(value) in (str, int, float, bool):
    return value
  if isinstance(value, str):
    return str.__str__(value)
  if isinstance(value, int):
    return int.__int__(value)
  if isinstance(value, float):
    return float.__float__(value)
  if isinstance(value, Mapping):
    return {_plain(k): _plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_plain(v) for v in value]
  if isinstance(value, tuple):
    return tuple(_plain(v) for v in value)
  if hasattr(value, "item"):  # numpy scalars
    return _plain(value.item())
  return f"<{type(value).__name__}>"


def _normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
  """As transformers: drop None-valued keys, alias the reasoning fields."""
  out = []
  for i, message in enumerate(messages):
    if not isinstance(message, Mapping):
      raise TypeError(f"messages[{i}] is {message!r}; chat messages are "
                      'dicts such as {"role": "user", "content": "Hi"}.')
    message = {k: _plain(v) for k, v in message.items() if v is not None}
    reasoning = next((message[k] for k in _REASONING_FIELDS
                      if message.get(k) is not None), None)
    if reasoning is not None:
      message = {"thinking": reasoning, **message,
                 "reasoning_content": reasoning}
    out.append(message)
  return out


class Tokenizer:
  """A Hugging Face checkpoint's tokenizer and chat template.

  Build it with :meth:`from_dir`. Attributes:
    path: the checkpoint directory.
    vocab_size: number of token ids the tokenizer knows (added tokens
      included). A model's embedding may have more rows (Qwen pads it).
    bos_id: the BOS token's id, or None (Qwen has none).
    eos_ids: the ids that end a generation (generation_config's first).
    pad_id: the pad token's id, or None.
    bos_token / eos_token / pad_token: their text, or None.
    chat_template: the template text, a {name: template} dict, or None.
  """

  def __init__(self, backend: tokenizers.Tokenizer, *,
               config: Mapping[str, Any] | None = None,
               generation_config: Mapping[str, Any] | None = None,
               chat_template: str | Mapping[str, str] | None = None,
               path: str | os.PathLike | None = None):
    """Wraps a loaded tokenizer; most callers want :meth:`from_dir`.

    Args:
      backend: the ``tokenizers.Tokenizer`` of tokenizer.json.
      config: the parsed tokenizer_config.json ({} if absent).
      generation_config: the parsed generation_config.json, or None.
      chat_template: the template, {name: template}, or None.
      path: the directory the files came from (for error messages).
    """
    self.path = pathlib.Path(path) if path is not None else None
    where = self.path if self.path is not None else pathlib.Path("<memory>")
    config = dict(config or {})
    self._config = config
    self._backend = backend
    self.chat_template = chat_template
    cfg_path = where / CONFIG_FILE
    self.special_tokens = {}
    for name in _SPECIAL_TOKEN_NAMES:
      text = _token_text(config.get(name), cfg_path, name)
      if text is not None:
        self.special_tokens[name] = text
    self.bos_token = self.special_tokens.get("bos_token")
    self.eos_token = self.special_tokens.get("eos_token")
    self.pad_token = self.special_tokens.get("pad_token")
    self.bos_id = self._token_id(self.bos_token, cfg_path, "bos_token")
    self.pad_id = self._token_id(self.pad_token, cfg_path, "pad_token")
    config_eos = self._token_id(self.eos_token, cfg_path, "eos_token")
    self.eos_ids = self._eos_ids(config_eos, generation_config,
                                 where / GENERATION_CONFIG_FILE)
    self.clean_up_tokenization_spaces = bool(
        config.get("clean_up_tokenization_spaces", False))
    self._force_bpe_clean_up = bool(config.get(
        "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_"
        "output", False))
    # As transformers: add_bos_token / add_eos_token in the config (or no
    # post-processor at all) replace tokenizer.json's post-processor.
    if ("add_bos_token" in config or "add_eos_token" in config
        or backend.post_processor is None):
      self._set_post_processor(bool(config.get("add_bos_token", False)),
                               bool(config.get("add_eos_token", False)),
                               config_eos)
    self._token_bytes = None

  @classmethod
  def from_dir(cls, path: str | os.PathLike) -> "Tokenizer":
    """Loads the tokenizer files of a local Hugging Face checkpoint.

    Args:
      path: the checkpoint directory, or a file in it (e.g. its
        tokenizer.json).

    Returns:
      The Tokenizer.

    Raises:
      FileNotFoundError: the path or its tokenizer.json does not exist.
      ValueError: a file is malformed, or a special token is not in the
        vocabulary.
    """
    path = pathlib.Path(path)
    if not path.exists():
      raise FileNotFoundError(
          f"{path} does not exist; pass the local directory of a Hugging "
          "Face checkpoint (the one holding tokenizer.json).")
    directory = path if path.is_dir() else path.parent
    tok_path = directory / TOKENIZER_FILE
    if not tok_path.is_file():
      hint = (" It has a sentencepiece tokenizer.model only: convert it "
              "once with transformers (AutoTokenizer.from_pretrained(dir)"
              ".save_pretrained(dir)) to write tokenizer.json."
              if (directory / "tokenizer.model").exists() else
              " Download the checkpoint's tokenizer.json into it.")
      raise FileNotFoundError(
          f"No {TOKENIZER_FILE} in {directory}: only Hugging Face 'fast' "
          f"tokenizer files are supported.{hint}")
    _read_json(tok_path)  # A clear error for malformed JSON.
    try:
      backend = tokenizers.Tokenizer.from_file(str(tok_path))
    except Exception as e:  # tokenizers raises plain Exception.
      raise ValueError(
          f"{tok_path} is valid JSON but not a tokenizer the tokenizers "
          f"library {tokenizers.__version__} can read: {e}. Upgrade "
          "tokenizers, or re-download the file.") from e
    config = {}
    if (directory / CONFIG_FILE).is_file():
      config = _read_json(directory / CONFIG_FILE)
      if not isinstance(config, dict):
        raise ValueError(f"{directory / CONFIG_FILE} holds a "
                         f"{type(config).__name__}, not a JSON object.")
    generation_config = None
    if (directory / GENERATION_CONFIG_FILE).is_file():
      generation_config = _read_json(directory / GENERATION_CONFIG_FILE)
      if not isinstance(generation_config, dict):
        raise ValueError(f"{directory / GENERATION_CONFIG_FILE} holds a "
                         f"{type(generation_config).__name__}, not a JSON "
                         "object.")
    if (directory / CHAT_TEMPLATE_FILE).is_file():
      chat_template = (directory / CHAT_TEMPLATE_FILE).read_text(
          encoding="utf-8")
    else:
      chat_template = _config_template(config.get("chat_template"),
                                       directory / CONFIG_FILE)
    return cls(backend, config=config, generation_config=generation_config,
               chat_template=chat_template, path=directory)

  # -- Vocabulary ------------------------------------------------------------

  @property
  def vocab_size(self) -> int:
    return self._backend.get_vocab_size(with_added_tokens=True)

  @property
  def backend(self) -> tokenizers.Tokenizer:
    """The underlying ``tokenizers.Tokenizer``."""
    return self._backend

  def token_to_id(self, token: str) -> int | None:
    return self._backend.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self._backend.id_to_token(token_id)

  def _token_id(self, token, path, name):
    if token is None:
      return None
    token_id = self._backend.token_to_id(token)
    if token_id is None:
      raise ValueError(
          f"{path}: {name} {token!r} is not in the vocabulary of "
          f"{TOKENIZER_FILE} ({self.vocab_size} tokens). Set {name} to one of "
          "its tokens (or null), or use the tokenizer.json that came with "
          "this config.")
    return token_id

  def _eos_ids(self, config_eos, generation_config, path):
    ids = []
    if generation_config is not None:
      raw = generation_config.get("eos_token_id")
      raw = [] if raw is None else raw if isinstance(raw, list) else [raw]
      for i in raw:
        if (not isinstance(i, int) or isinstance(i, bool)
            or not 0 <= i < self.vocab_size):
          raise ValueError(
              f"{path}: eos_token_id holds {i!r}, which is not a token id of "
              f"{TOKENIZER_FILE} (0..{self.vocab_size - 1}). Fix it to the "
              "ids of the end-of-turn tokens.")
        if i not in ids:
          ids.append(i)
    if config_eos is not None and config_eos not in ids:
      ids.append(config_eos)
    return tuple(ids)

  def _set_post_processor(self, add_bos, add_eos, eos_id):
    bos, eos = self.bos_token, self.eos_token
    add_bos = add_bos and bos is not None
    add_eos = add_eos and eos is not None
    single = (f"{bos}:0 " if add_bos else "") + "$A:0" + (
        f" {eos}:0" if add_eos else "")
    pair = (single + (f" {bos}:1" if add_bos else "") + " $B:1"
            + (f" {eos}:1" if add_eos else ""))
    special = []
    if add_bos:
      special.append((bos, self.bos_id))
    if add_eos:
      special.append((eos, eos_id))
    self._backend.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=special)

  # -- Encoding and decoding -------------------------------------------------

  def encode(self, text: str, *, add_special_tokens: bool = True
             ) -> list[int]:
    """Token ids of ``text``.

    Special-token text inside ``text`` (e.g. "<|im_end|>") becomes that
    token, as in transformers. ``add_special_tokens`` adds what the
    tokenizer's post-processor adds (BOS for Llama 3 and Gemma, nothing for
    Qwen).
    """
    if not isinstance(text, str):
      raise TypeError(f"encode takes a str, got {type(text).__name__}.")
    return self._backend.encode(
        text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids: Sequence[int], *,
             skip_special_tokens: bool = False) -> str:
    """The text of token ids (unknown ids are skipped, as in transformers).

    Args:
      ids: token ids (a list, tuple or 1-D array).
      skip_special_tokens: leave out special tokens (added tokens marked
        special; e.g. Qwen3's <think> is not special, so it stays).
    """
    ids = [int(i) for i in ids]
    text = self._backend.decode(ids, skip_special_tokens=skip_special_tokens)
    if self.clean_up_tokenization_spaces:
      # transformers 5 skips the clean-up for BPE models (it would remove
      # real spaces before punctuation), unless forced.
      model_type = type(self._backend.model).__name__
      if model_type != "BPE" or self._force_bpe_clean_up:
        text = _clean_up_tokenization(text)
    return text

  def token_bytes(self, num_ids: int | None = None) -> list[bytes]:
    """The raw bytes each token id stands for.

    Byte-level BPE (Llama 3, Qwen): the token's characters mapped back
    through GPT-2's byte alphabet. SentencePiece style (Gemma): "▁" is a
    space and ``<0xNN>`` is byte NN. Added tokens (special or not): their
    text in UTF-8. So, for text without special tokens,
    ``b"".join(token_bytes()[i] for i in encode(text, add_special_tokens=
    False)) == text.encode()`` (up to the tokenizer's normalizer, e.g.
    Qwen's NFC).

    Args:
      num_ids: length of the list (default vocab_size): ids beyond the
        tokenizer's (a model's padded embedding rows) get b"".
    """
    if self._token_bytes is None:
      self._token_bytes = self._compute_token_bytes()
    n = self.vocab_size if num_ids is None else num_ids
    if n < self.vocab_size:
      raise ValueError(f"num_ids={n} is below the tokenizer's vocab_size "
                       f"{self.vocab_size}; pass at least vocab_size.")
    return self._token_bytes + [b""] * (n - self.vocab_size)

  def _compute_token_bytes(self) -> list[bytes]:
    spec = json.loads(self._backend.to_str())
    decoder_types = _decoder_types(spec.get("decoder"))
    added = {t["id"]: t["content"] for t in spec.get("added_tokens") or ()}
    byte_level = "ByteLevel" in decoder_types
    sentencepiece = bool(decoder_types & {"ByteFallback", "Metaspace"}) or (
        "Replace" in decoder_types and not byte_level)
    out = []
    for i in range(self.vocab_size):
      token = self._backend.id_to_token(i)
      if token is None:
        out.append(b"")
      elif i in added:
        out.append(added[i].encode("utf-8"))
      elif byte_level:
        try:
          out.append(bytes(_BYTE_DECODER[c] for c in token))
        except KeyError:
          out.append(token.encode("utf-8"))
      elif sentencepiece:
        if (len(token) == 6 and token.startswith("<0x")
            and token.endswith(">")):
          out.append(bytes([int(token[3:5], 16)]))
        else:
          out.append(token.replace("▁", " ").encode("utf-8"))
      else:
        out.append(self._backend.decode([i]).encode("utf-8"))
    return out

  # -- Chat ------------------------------------------------------------------

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *,
                          add_generation_prompt: bool = False,
                          tokenize: bool = False,
                          tools: Sequence[Mapping[str, Any]] | None = None,
                          documents: Sequence[Mapping[str, Any]] | None = None,
                          chat_template: str | None = None,
                          **template_kwargs) -> str | list[int]:
    """Renders a conversation with the checkpoint's chat template.

    As transformers' ``tokenizer.apply_chat_template``: jinja2's sandbox with
    trim_blocks and lstrip_blocks, the loopcontrols extension, transformers'
    ``tojson``, ``raise_exception`` and ``strftime_now``; the special tokens
    (bos_token, eos_token, pad_token, ...) are template variables.

    Args:
      messages: [{"role": ..., "content": ...}, ...].
      add_generation_prompt: end with the assistant's turn header.
      tokenize: return the token ids of the rendering (encoded without
        adding special tokens: the template writes them) instead of text.
      tools: tool schemas (dicts) for templates that render them.
      documents: documents for templates that render them.
      chat_template: a template text, or the name of one of the
        checkpoint's named templates, instead of the default.
      **template_kwargs: more template variables, e.g. ``date_string`` for
        Llama 3 (whose template prints today's date otherwise) or
        ``enable_thinking=False`` for Qwen3.

    Returns:
      The rendered text, or its token ids when ``tokenize``.

    Raises:
      ValueError: the checkpoint has no chat template, or names are wrong.
      jinja2.TemplateError: the template rejects the conversation.
    """
    template = self._select_template(chat_template, tools)
    if not messages:
      raise ValueError("Cannot apply a chat template to an empty "
                       "conversation; pass at least one message.")
    kwargs = {**self.special_tokens, **_plain(template_kwargs)}
    text = _compile_cached(template).render(
        messages=_normalize_messages(messages), tools=_plain(tools),
        documents=_plain(documents),
        add_generation_prompt=add_generation_prompt, **kwargs)
    if tokenize:
      return self.encode(text, add_special_tokens=False)
    return text

  def _select_template(self, chat_template, tools):
    templates = self.chat_template
    if isinstance(templates, Mapping):
      if chat_template is not None and chat_template in templates:
        return templates[chat_template]
      if chat_template is not None:
        return chat_template
      if tools is not None and "tool_use" in templates:
        return templates["tool_use"]
      if "default" in templates:
        return templates["default"]
      raise ValueError(
          f"{self._where(CONFIG_FILE)} has several chat templates "
          f"{sorted(templates)} and none is named 'default'; pass "
          "chat_template=<one of those names>.")
    if chat_template is not None:
      return chat_template
    if templates is None:
      raise ValueError(
          f"{self._where(CONFIG_FILE)} has no chat_template (and there is no "
          f"{CHAT_TEMPLATE_FILE}): this is probably a base model, not an "
          "instruct one. Format the prompt yourself, or pass "
          "chat_template=<jinja text>.")
    return templates

  def _where(self, name):
    return str(self.path / name) if self.path is not None else name

  def __repr__(self):
    return (f"Tokenizer({self.path}, vocab_size={self.vocab_size}, "
            f"bos_id={self.bos_id}, eos_ids={self.eos_ids})")


def _config_template(value, path):
  """tokenizer_config's chat_template: a string or a list of named ones."""
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, list):
    named = {}
    for item in value:
      if not (isinstance(item, Mapping) and isinstance(item.get("name"), str)
              and isinstance(item.get("template"), str)):
        raise ValueError(
            f"{path}: chat_template is a list, so each entry should be "
            f'{{"name": str, "template": str}}, but one is {item!r}.')
      named[item["name"]] = item["template"]
    return named
  raise ValueError(f"{path}: chat_template is a {type(value).__name__}; "
                   'expected a string or a list of {"name", "template"}.')


def _clean_up_tokenization(text: str) -> str:
  return (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!")
          .replace(" ,", ",").replace(" ' ", "'").replace(" n't", "n't")
          .replace(" 'm", "'m").replace(" 's", "'s").replace(" 've", "'ve")
          .replace(" 're", "'re"))


_COMPILED: dict[str, jinja2.Template] = {}


def _compile_cached(template: str) -> jinja2.Template:
  if template not in _COMPILED:
    _COMPILED[template] = _compile(template)
  return _COMPILED[template]
