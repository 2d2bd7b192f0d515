"""Writes the Hugging Face reference outputs ("goldens") in tests/goldens/.

A maintainer tool, not part of the package: it is the only code in the repo
that imports torch and transformers, and it runs in its own virtual
environment outside the repo. The tests read what it wrote (no torch there).

For each family (llama3, qwen2, qwen3, gemma3) it writes, in
``<out>/<family>/``:

* a tiny random checkpoint in the exact Hugging Face layout (config.json,
  safetensors weights, tokenizer.json, tokenizer_config.json with the family's
  real chat template, generation_config.json);
* ``reference.npz``: input_ids / attention_mask / logits of a right-padded
  batch of three prompts, and 32 greedy tokens for each prompt alone;
* ``reference.json``: tokenization cases (ids, decodes) and chat renderings.

Every reference output is computed by transformers from the files on disk
(the model and the tokenizer are reloaded from the written directory), so the
goldens are what transformers makes of those files.

Versions used: torch 2.13.0+cpu, transformers 5.25.0, tokenizers 0.23.3.

Reproduce (from the repo root)::

  python3 -m venv /work/toolvenv
  /work/toolvenv/bin/pip install torch==2.13.0
  /work/toolvenv/bin/pip install transformers safetensors tokenizers jinja2 numpy
  /work/toolvenv/bin/python tools/make_goldens.py --out tests/goldens

Seeds are fixed (``--seed``, default 0), and the tokenizers are trained on
the first lines of /work/shared/data/gsm8k/train.jsonl (``--corpus``).
"""

import argparse
import copy
import json
import os
import pathlib
import shutil

import numpy as np
import tokenizers
from tokenizers import decoders
from tokenizers import models as tok_models
from tokenizers import normalizers
from tokenizers import pre_tokenizers
from tokenizers import processors
from tokenizers import trainers
import torch
import transformers

_TEMPLATES = pathlib.Path(__file__).resolve().parent / "chat_templates"

# The split regexes of the real tokenizer.json files.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Llama 3's first special tokens, in their real order (128000...).
_LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
]
_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen3 has <think> and </think> as added tokens that are NOT special (they
# survive decode(skip_special_tokens=True)), as in the real tokenizer.json.
_QWEN3_ADDED = ["<tool_call>", "</tool_call>", "<think>", "</think>"]
_GEMMA_HEAD = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
_GEMMA_TURN = ["<start_of_turn>", "<end_of_turn>"]

TOKENIZATION_CASES = [
  "Natalia sold 48 clips in April.",
  "café – 数学 ∑ 🙂",
  "12345 6.78 1,000",
  "a  \n\n\tb   ",
  "   leading and trailing   ",
  "",
  "Step 1: 3 + 4 = 7.\n\nStep 2: 7 * 2 = 14.\n\n",
  "x<|im_end|>y <|eot_id|> <end_of_turn>z",
  "Hello <think>hmm</think> world <|endoftext|>",
  "He's got 1000000 apples; they'll eat 37%!",
  "\n\n\n",
]

PROMPTS = [
  "Natalia sold clips to 48 of her friends in April, and then she sold half "
  "as many",
  "Weng earns $12 an hour for babysitting. She did",
  "Betty has 100 dollars",
]

CONVERSATIONS = [
  [{"role": "system", "content": "You are a careful math tutor."},
   {"role": "user", "content": "What is 12 * 7?"}],
  [{"role": "user", "content": "How many legs do 3 cats have?"},
   {"role": "assistant",
    "content": "<think>\n3 cats, 4 legs each.\n</think>\n\n12 legs."},
   {"role": "user", "content": "  And 5 dogs?  "}],
  [{"role": "user", "content": "Solve: 2 + 2 =\n\nShow your steps."}],
]

NUM_GREEDY = 32


def _corpus(path, lines):
  texts = []
  with open(path) as f:
    for i, line in enumerate(f):
      if i >= lines:
        break
      row = json.loads(line)
      texts.append(row["question"])
      texts.append(row["answer"])
  return texts


def _byte_level_tokenizer(texts, split, specials, added, vocab_size,
                          bos=None, nfc=False):
  """A byte-level BPE shaped like Llama 3's / Qwen's tokenizer.json."""
  tok = tokenizers.Tokenizer(tok_models.BPE())
  if nfc:
    tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(split), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
  ])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer=trainer)
  tok.add_special_tokens(
      [tokenizers.AddedToken(s, special=True, normalized=False)
       for s in specials])
  if added:
    tok.add_tokens([tokenizers.AddedToken(s, special=False, normalized=False)
                    for s in added])
  byte_level = processors.ByteLevel(trim_offsets=False)
  if bos is None:
    tok.post_processor = byte_level
  else:
    tok.post_processor = processors.Sequence([
        byte_level,
        processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))]),
    ])
  return tok


def _gemma_tokenizer(texts, vocab_size):
  """A SentencePiece-style BPE (▁ for spaces, <0xNN> byte fallback)."""
  # Train pieces on ▁-joined words, then lay the vocabulary out like Gemma's:
  # special tokens first, then the 256 byte tokens, then the pieces.
  trainer_tok = tokenizers.Tokenizer(tok_models.BPE())
  trainer_tok.normalizer = normalizers.Replace(" ", "▁")
  trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(
      replacement="▁", prepend_scheme="never", split=True)
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False)
  trainer_tok.train_from_iterator(texts, trainer=trainer)
  trained = json.loads(trainer_tok.to_str())["model"]
  head = _GEMMA_HEAD + [f"<unused{i}>" for i in range(3)] + _GEMMA_TURN
  vocab = {}
  for t in head:
    vocab[t] = len(vocab)
  for b in range(256):
    vocab[f"<0x{b:02X}>"] = len(vocab)
  for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
    if t not in vocab:
      vocab[t] = len(vocab)
  merges = trained["merges"]
  spec = {
      "version": "1.0",
      "truncation": None,
      "padding": None,
      "added_tokens": [
          {"id": vocab[t], "content": t, "single_word": False,
           "lstrip": False, "rstrip": False, "normalized": False,
           "special": True}
          for t in head],
      "normalizer": {"type": "Replace", "pattern": {"String": " "},
                     "content": "▁"},
      "pre_tokenizer": None,
      "post_processor": {
          "type": "TemplateProcessing",
          "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}}],
          "pair": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "<bos>", "type_id": 1}},
                   {"Sequence": {"id": "B", "type_id": 1}}],
          "special_tokens": {"<bos>": {"id": "<bos>", "ids": [vocab["<bos>"]],
                                       "tokens": ["<bos>"]}},
      },
      "decoder": {"type": "Sequence", "decoders": [
          {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
          {"type": "ByteFallback"},
          {"type": "Fuse"},
      ]},
      "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                "continuing_subword_prefix": None, "end_of_word_suffix": None,
                "fuse_unk": True, "byte_fallback": True,
                "ignore_merges": False, "vocab": vocab, "merges": merges},
  }
  return tokenizers.Tokenizer.from_str(json.dumps(spec))


def _added_tokens_decoder(tok):
  spec = json.loads(tok.to_str())
  return {
      str(t["id"]): {"content": t["content"], "lstrip": t["lstrip"],
                     "normalized": t["normalized"], "rstrip": t["rstrip"],
                     "single_word": t["single_word"], "special": t["special"]}
      for t in spec["added_tokens"]}


def _family_specs(texts):
  """Tokenizer, tokenizer_config, generation_config and model config."""
  specs = {}

  # Llama 3.2 instruct.
  tok = _byte_level_tokenizer(texts, _LLAMA3_SPLIT, _LLAMA3_SPECIALS, [],
                              vocab_size=700, bos="<|begin_of_text|>")
  ids = tok.token_to_id
  specs["llama3"] = dict(
      tokenizer=tok,
      tokenizer_config={
          "added_tokens_decoder": _added_tokens_decoder(tok),
          "bos_token": "<|begin_of_text|>",
          "chat_template": (_TEMPLATES / "llama3.jinja").read_text(),
          "clean_up_tokenization_spaces": True,
          "eos_token": "<|eot_id|>",
          "model_input_names": ["input_ids", "attention_mask"],
          "model_max_length": 131072,
          "tokenizer_class": "PreTrainedTokenizerFast",
      },
      generation_config={
          "bos_token_id": ids("<|begin_of_text|>"),
          "do_sample": True,
          "eos_token_id": [ids("<|end_of_text|>"), ids("<|eom_id|>"),
                           ids("<|eot_id|>")],
          "temperature": 0.6, "top_p": 0.9,
      },
      config_cls=transformers.LlamaConfig,
      model_cls=transformers.LlamaForCausalLM,
      config=dict(
          vocab_size=tok.get_vocab_size(), hidden_size=64,
          intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, max_position_embeddings=128,
          rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=True,
          bos_token_id=ids("<|begin_of_text|>"),
          eos_token_id=[ids("<|end_of_text|>"), ids("<|eom_id|>"),
                        ids("<|eot_id|>")],
          rope_parameters={
              "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 32},
      ),
      # The form published Llama 3.x checkpoints carry.
      published_rope={
          "rope_theta": 500000.0,
          "rope_scaling": {
              "factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
              "original_max_position_embeddings": 32, "rope_type": "llama3"},
      },
      pad_id=ids("<|finetune_right_pad_id|>"),
      chat_kwargs={"date_string": "26 Jul 2024"},
  )

  # Qwen2.5 instruct.
  tok = _byte_level_tokenizer(texts, _QWEN_SPLIT, _QWEN_SPECIALS, [],
                              vocab_size=650, nfc=True)
  ids = tok.token_to_id
  qwen_tc = {
      "add_prefix_space": False,
      "added_tokens_decoder": _added_tokens_decoder(tok),
      "bos_token": None,
      "chat_template": (_TEMPLATES / "qwen2.jinja").read_text(),
      "clean_up_tokenization_spaces": False,
      "eos_token": "<|im_end|>",
      "errors": "replace",
      "model_max_length": 131072,
      "pad_token": "<|endoftext|>",
      "split_special_tokens": False,
      "tokenizer_class": "Qwen2Tokenizer",
      "unk_token": None,
  }
  specs["qwen2"] = dict(
      tokenizer=tok,
      tokenizer_config=qwen_tc,
      generation_config={
          "bos_token_id": ids("<|endoftext|>"),
          "pad_token_id": ids("<|endoftext|>"),
          "do_sample": True,
          "eos_token_id": [ids("<|im_end|>"), ids("<|endoftext|>")],
          "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8,
          "top_k": 20,
      },
      config_cls=transformers.Qwen2Config,
      model_cls=transformers.Qwen2ForCausalLM,
      config=dict(
          # Embedding rows beyond the tokenizer, as real Qwen checkpoints.
          vocab_size=768, hidden_size=64, intermediate_size=128,
          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
          max_position_embeddings=128, rms_norm_eps=1e-6, hidden_act="silu",
          tie_word_embeddings=False, use_sliding_window=False,
          bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
          rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
      ),
      published_rope=None,
      pad_id=ids("<|endoftext|>"),
      chat_kwargs={},
  )

  # Qwen3.
  tok = _byte_level_tokenizer(texts, _QWEN_SPLIT, _QWEN_SPECIALS,
                              _QWEN3_ADDED, vocab_size=620, nfc=True)
  ids = tok.token_to_id
  qwen3_tc = dict(qwen_tc)
  qwen3_tc["added_tokens_decoder"] = _added_tokens_decoder(tok)
  qwen3_tc["chat_template"] = (_TEMPLATES / "qwen3.jinja").read_text()
  specs["qwen3"] = dict(
      tokenizer=tok,
      tokenizer_config=qwen3_tc,
      generation_config={
          "bos_token_id": ids("<|endoftext|>"),
          "pad_token_id": ids("<|endoftext|>"),
          "do_sample": True,
          "eos_token_id": [ids("<|im_end|>"), ids("<|endoftext|>")],
          "temperature": 0.6, "top_k": 20, "top_p": 0.95,
      },
      config_cls=transformers.Qwen3Config,
      model_cls=transformers.Qwen3ForCausalLM,
      config=dict(
          vocab_size=tok.get_vocab_size(), hidden_size=64, head_dim=32,
          intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, max_position_embeddings=128,
          rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=True,
          attention_bias=False, use_sliding_window=False,
          bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
          rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
      ),
      published_rope=None,
      pad_id=ids("<|endoftext|>"),
      chat_kwargs={},
      bf16=True,
  )

  # Gemma 3 (text).
  tok = _gemma_tokenizer(texts, vocab_size=600)
  ids = tok.token_to_id
  specs["gemma3"] = dict(
      tokenizer=tok,
      tokenizer_config={
          "add_bos_token": True,
          "add_eos_token": False,
          "added_tokens_decoder": _added_tokens_decoder(tok),
          "bos_token": "<bos>",
          "chat_template": (_TEMPLATES / "gemma3.jinja").read_text(),
          "clean_up_tokenization_spaces": False,
          "eos_token": "<eos>",
          "model_max_length": 1000000000000000019884624838656,
          "pad_token": "<pad>",
          "spaces_between_special_tokens": False,
          "tokenizer_class": "GemmaTokenizer",
          "unk_token": "<unk>",
          "use_default_system_prompt": False,
      },
      generation_config={
          "bos_token_id": ids("<bos>"),
          "cache_implementation": "hybrid",
          "do_sample": True,
          "eos_token_id": [ids("<eos>"), ids("<end_of_turn>")],
          "pad_token_id": ids("<pad>"),
          "top_k": 64, "top_p": 0.95,
      },
      config_cls=transformers.Gemma3TextConfig,
      model_cls=transformers.Gemma3ForCausalLM,
      config=dict(
          vocab_size=tok.get_vocab_size(), hidden_size=64, head_dim=32,
          intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
          num_key_value_heads=2, max_position_embeddings=128,
          rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
          query_pre_attn_scalar=16, sliding_window=6,
          layer_types=["sliding_attention", "full_attention",
                       "sliding_attention", "full_attention"],
          attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
          tie_word_embeddings=True, pad_token_id=ids("<pad>"),
          bos_token_id=ids("<bos>"), eos_token_id=[ids("<eos>"),
                                                   ids("<end_of_turn>")],
          rope_parameters={
              "full_attention": {"rope_type": "linear", "factor": 8.0,
                                 "rope_theta": 1000000.0},
              "sliding_attention": {"rope_type": "default",
                                    "rope_theta": 10000.0}},
      ),
      # The form published Gemma 3 checkpoints carry.
      published_rope={
          "rope_theta": 1000000.0,
          "rope_local_base_freq": 10000.0,
          "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
          "sliding_window_pattern": 2,
      },
      pad_id=ids("<pad>"),
      chat_kwargs={},
      bf16=True,
  )
  return specs


def _randomize(model, gemma, gen):
  """Random weights large enough that logits are far from flat.

  Gemma scales its embeddings by sqrt(hidden_size) and normalizes every
  layer's output (post-norms), so its embeddings are kept small and its
  matrices and norm weights larger: otherwise the embedding of the last token
  dominates the residual stream and greedy decoding repeats one token.
  """
  emb, mat, norm = (0.1, 0.8, 1.0) if gemma else (0.6, 0.25, 0.3)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim == 1 and "norm" in name:
        # Gemma's RMSNorm multiplies by (1 + w); the others by w.
        p.copy_((0.0 if gemma else 1.0) + norm * noise)
      elif p.ndim == 1:
        p.copy_(0.2 * noise)
      elif "embed_tokens" in name:
        p.copy_(emb * noise)
      else:
        p.copy_(mat * noise)


def _write_config(directory, published_rope):
  """Rewrites config.json in the form published checkpoints carry."""
  path = directory / "config.json"
  cfg = json.loads(path.read_text())
  cfg.pop("rope_parameters")
  cfg.pop("_sliding_window_pattern", None)  # transformers' private field.
  if "layer_types" in cfg and "sliding_window_pattern" in published_rope:
    cfg.pop("layer_types")
  cfg.update(published_rope)
  path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _save_model(model, directory, bf16, sharded):
  if bf16:
    model = copy.deepcopy(model).to(torch.bfloat16)
  if sharded:
    total = sum(t.numel() * t.element_size()
                for t in model.state_dict().values())
    model.save_pretrained(directory, max_shard_size=int(total * 0.6))
    shards = sorted(directory.glob("model-*.safetensors"))
    assert len(shards) == 2, f"expected 2 shards, got {shards}"
  else:
    model.save_pretrained(directory)
    assert (directory / "model.safetensors").exists()


def _reference_tokenizer(directory):
  return transformers.AutoTokenizer.from_pretrained(str(directory))


def _forward_logits(model, ids, mask=None):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids),
                attention_mask=None if mask is None else torch.tensor(mask))
  return out.logits.float().numpy()


def _make_family(name, spec, out, seed):
  directory = out / name
  if directory.exists():
    shutil.rmtree(directory)
  directory.mkdir(parents=True)
  tok = spec["tokenizer"]
  tok.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(
      json.dumps(spec["tokenizer_config"], indent=2, ensure_ascii=False)
      + "\n")
  (directory / "generation_config.json").write_text(
      json.dumps(spec["generation_config"], indent=2) + "\n")

  torch.manual_seed(seed)
  gen = torch.Generator().manual_seed(seed)
  config = spec["config_cls"](**spec["config"])
  config.architectures = [spec["model_cls"].__name__]
  model = spec["model_cls"](config).eval()
  _randomize(model, name == "gemma3", gen)
  _save_model(model, directory, spec.get("bf16", False), name == "qwen2")
  # save_pretrained writes its own generation_config.json: put ours back.
  (directory / "generation_config.json").write_text(
      json.dumps(spec["generation_config"], indent=2) + "\n")
  if spec["published_rope"] is not None:
    _write_config(directory, spec["published_rope"])

  # Everything below comes from the files on disk (bf16 weights are read
  # back into float32, so the reference uses the bf16-rounded values).
  ref_model = transformers.AutoModelForCausalLM.from_pretrained(
      str(directory), dtype=torch.float32, attn_implementation="eager").eval()
  _check_config(name, ref_model.config, spec["config"])
  hf_tok = _reference_tokenizer(directory)

  encoded = [hf_tok(p, add_special_tokens=True)["input_ids"]
             for p in PROMPTS]
  for p, e in zip(PROMPTS, encoded):
    raw = tok.encode(p, add_special_tokens=True).ids
    assert e == raw, (name, p, e, raw)
  length = max(len(e) for e in encoded)
  input_ids = np.full((len(PROMPTS), length), spec["pad_id"], np.int32)
  mask = np.zeros((len(PROMPTS), length), np.int32)
  for i, e in enumerate(encoded):
    input_ids[i, :len(e)] = e
    mask[i, :len(e)] = 1
  logits = _forward_logits(ref_model, input_ids.astype(np.int64),
                           mask.astype(np.int64))
  logits = logits * mask[:, :, None]
  greedy = np.zeros((len(PROMPTS), NUM_GREEDY), np.int32)
  greedy_max = np.zeros((len(PROMPTS), NUM_GREEDY), np.float32)
  for i, e in enumerate(encoded):
    alone = _forward_logits(ref_model, [e])[0]
    np.testing.assert_allclose(alone, logits[i, :len(e)], atol=1e-4,
                               rtol=1e-4)
    seq = list(e)
    for t in range(NUM_GREEDY):
      last = _forward_logits(ref_model, [seq])[0, -1]
      greedy[i, t] = int(np.argmax(last))
      greedy_max[i, t] = float(last.max())
      seq.append(int(greedy[i, t]))
    assert len(set(greedy[i].tolist())) >= 4, (name, greedy[i])
  np.savez_compressed(
      directory / "reference.npz", input_ids=input_ids, attention_mask=mask,
      logits=logits.astype(np.float32), greedy=greedy,
      greedy_max_logit=greedy_max)

  cases = []
  for text in TOKENIZATION_CASES:
    case = {"text": text}
    for add in (False, True):
      ids = hf_tok.encode(text, add_special_tokens=add)
      case[f"ids_add_special_{add}"] = ids
      case[f"decode_add_special_{add}"] = hf_tok.decode(ids)
      case[f"decode_skip_add_special_{add}"] = hf_tok.decode(
          ids, skip_special_tokens=True)
    cases.append(case)
  chats = []
  kwargs = spec["chat_kwargs"]
  for k, messages in enumerate(CONVERSATIONS):
    for gen_prompt in (False, True):
      text = hf_tok.apply_chat_template(
          messages, add_generation_prompt=gen_prompt, tokenize=False,
          **kwargs)
      chats.append({"messages": messages,
                    "add_generation_prompt": gen_prompt,
                    "template_kwargs": kwargs, "text": text})
  if name == "qwen3":
    extra = dict(kwargs, enable_thinking=False)
    chats.append({
        "messages": CONVERSATIONS[2], "add_generation_prompt": True,
        "template_kwargs": extra,
        "text": hf_tok.apply_chat_template(
            CONVERSATIONS[2], add_generation_prompt=True, tokenize=False,
            **extra)})
  tokenized_chat = hf_tok.apply_chat_template(
      CONVERSATIONS[0], add_generation_prompt=True, tokenize=True, **kwargs)
  if isinstance(tokenized_chat, dict) or hasattr(tokenized_chat, "keys"):
    tokenized_chat = tokenized_chat["input_ids"]
  tokenized_chat = [int(i) for i in tokenized_chat]
  reference = {
      "family": name,
      "model_class": spec["model_cls"].__name__,
      "vocab_size_tokenizer": tok.get_vocab_size(),
      "vocab_size_model": ref_model.config.vocab_size,
      "pad_id": spec["pad_id"],
      "prompts": PROMPTS,
      "eos_token_ids": spec["generation_config"]["eos_token_id"],
      "bos_token": hf_tok.bos_token,
      "bos_token_id": hf_tok.bos_token_id,
      "eos_token": hf_tok.eos_token,
      "tokenization_cases": cases,
      "chat_renderings": chats,
      "chat_tokenized": {"conversation": 0, "add_generation_prompt": True,
                         "template_kwargs": kwargs, "ids": tokenized_chat},
      "versions": {"torch": torch.__version__,
                   "transformers": transformers.__version__,
                   "tokenizers": tokenizers.__version__},
  }
  (directory / "reference.json").write_text(
      json.dumps(reference, indent=1, ensure_ascii=False) + "\n")
  print(f"{name}: vocab {tok.get_vocab_size()} / {ref_model.config.vocab_size}"
        f", prompt lengths {[len(e) for e in encoded]}, logits std "
        f"{logits[mask.astype(bool)].std():.2f}, greedy[0] "
        f"{greedy[0].tolist()}")


def _check_config(name, loaded, intended):
  """Checks that transformers read config.json as intended."""
  want = intended["rope_parameters"]
  got = loaded.rope_parameters
  if name == "gemma3":
    for kind in ("full_attention", "sliding_attention"):
      for k, v in want[kind].items():
        assert got[kind][k] == v, (name, kind, k, got)
    assert list(loaded.layer_types) == intended["layer_types"], (
        loaded.layer_types)
  else:
    for k, v in want.items():
      assert got[k] == v, (name, k, got)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="tests/goldens")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--corpus",
                      default="/work/shared/data/gsm8k/train.jsonl")
  parser.add_argument("--corpus_lines", type=int, default=3000)
  parser.add_argument("--families", default="llama3,qwen2,qwen3,gemma3")
  args = parser.parse_args()
  torch.set_num_threads(1)
  out = pathlib.Path(args.out)
  texts = _corpus(args.corpus, args.corpus_lines)
  specs = _family_specs(texts)
  for i, name in enumerate(args.families.split(",")):
    _make_family(name, specs[name], out, args.seed + i)


if __name__ == "__main__":
  main()
