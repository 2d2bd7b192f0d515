"""Hugging Face checkpoints: load and export Llama 3, Qwen2/2.5, Qwen3, Gemma 3.

A checkpoint directory in the Hugging Face layout (``config.json``,
``model.safetensors`` or ``model-0000x-of-0000y.safetensors`` with
``model.safetensors.index.json``) becomes a :class:`models.ModelConfig` and a
pure parameter dict for :class:`models.Transformer` (the trainer's format),
without ever holding two copies of the model in host memory: the model is
built abstractly, each tensor is read through a memory map of its own bytes,
and only the slice each device owns is copied onto that device
(``jax.make_array_from_callback``), so the same code loads onto one GPU or
across the hosts of a TPU pod.

Supported architectures (``config.json``'s ``architectures``)::

  LlamaForCausalLM    Llama 3.x (RoPE scaling 'llama3', tied or untied)
  Qwen2ForCausalLM    Qwen2 / Qwen2.5 (q/k/v biases)
  Qwen3ForCausalLM    Qwen3 (q/k RMSNorm)
  Gemma3ForCausalLM   Gemma 3 text models (sqrt(d) embeddings, (1 + w)
                      norms, GeGLU, q/k norm, sliding-window local layers
                      with their own RoPE base, soft-capping)

``config.json`` is read in both forms: the one published checkpoints carry
(``rope_theta``, ``rope_scaling``, ``rope_local_base_freq`` at the top level)
and the ``rope_parameters`` form newer versions of the reference
implementation write.

The value head is not part of a Hugging Face checkpoint: it is read from
``value_head.safetensors`` when the directory has one (:func:`save` writes it)
and otherwise starts at zero, so the first values are the middle of
``value_range`` (0 for the default ``(-1, 1)``).

Example::

  cfg, params = models.hf.load("/ckpt/Qwen2.5-0.5B-Instruct",
                               dtype="bfloat16", param_dtype="bfloat16")
  model = models.hf.to_model(cfg, params)   # an nnx.Module
  out = model(tokens, positions)            # logits [B, T, V] float32
  models.hf.save("/tmp/export", cfg, params,
                 like="/ckpt/Qwen2.5-0.5B-Instruct")   # loadable anywhere

Why not ``safetensors.numpy.load``: it cannot read bfloat16 (the dtype of
nearly every published checkpoint), and ``safetensors.flax`` materialises
each whole tensor on one device; a memory map of the file's bytes (the format
is an 8-byte header length, a JSON header, then raw little-endian tensors)
lets each device read only its own slice. Writing uses ``safetensors``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import mmap
import os
import shutil
import struct
from typing import Any, Callable, Mapping

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from models.transformer import ModelConfig, RopeScaling, Transformer

PyTree = Any
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3_text",
}
_MODEL_TYPES = {v: k for k, v in ARCHITECTURES.items()}
_ST_DTYPES = {"F32": np.float32, "BF16": ml_dtypes.bfloat16,
              "F16": np.float16, "F64": np.float64}
_NP_TO_ST = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
_ACTIVATIONS = {"silu": "silu", "swish": "silu",
                "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
VALUE_HEAD_FILE = "value_head.safetensors"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json",
                    "generation_config.json", "special_tokens_map.json",
                    "chat_template.jinja", "tokenizer.model")


class CheckpointError(ValueError):
  """A checkpoint directory that cannot be loaded as asked."""


# ---------------------------------------------------------------------------
# config.json -> ModelConfig


def read_config(path: str) -> dict:
  """The ``config.json`` of checkpoint directory ``path``, as a dict."""
  file = os.path.join(path, "config.json")
  if not os.path.isdir(path):
    raise CheckpointError(f"{path!r} is not a directory; pass the directory "
                          "that holds config.json and the *.safetensors.")
  if not os.path.exists(file):
    raise CheckpointError(
        f"{path!r} has no config.json: it is not a Hugging Face checkpoint "
        f"directory (found {sorted(os.listdir(path))[:8]}).")
  try:
    with open(file) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{file} is not valid JSON: {e}") from e


def family(hf: Mapping[str, Any]) -> str:
  """The ``model_type`` of a supported architecture; a clear error if not."""
  archs = hf.get("architectures") or []
  for a in archs:
    if a in ARCHITECTURES:
      return ARCHITECTURES[a]
  if not archs and hf.get("model_type") in _MODEL_TYPES:
    return hf["model_type"]
  raise CheckpointError(
      f"Unsupported architecture {archs or hf.get('model_type')!r}; "
      f"supported: {', '.join(ARCHITECTURES)} (Llama 3, Qwen2/2.5, Qwen3, "
      "Gemma 3 text).")


def _scaling(d: Mapping[str, Any] | None) -> RopeScaling | None:
  if not d:
    return None
  kind = d.get("rope_type", d.get("type", "default"))
  if kind == "default":
    return None
  if kind == "linear":
    return RopeScaling(kind="linear", factor=float(d["factor"]))
  if kind == "llama3":
    return RopeScaling(
        kind="llama3", factor=float(d["factor"]),
        low_freq_factor=float(d["low_freq_factor"]),
        high_freq_factor=float(d["high_freq_factor"]),
        original_max_position_embeddings=int(
            d["original_max_position_embeddings"]))
  raise CheckpointError(f"RoPE scaling {kind!r} is not supported; supported: "
                        "default, linear, llama3.")


def _rope(hf: Mapping[str, Any], fam: str):
  """``(theta, scaling, local_theta)`` from either config form."""
  params = hf.get("rope_parameters")
  if params:
    if "full_attention" in params or "sliding_attention" in params:
      full = params.get("full_attention", {})
      local = params.get("sliding_attention", {})
      return (float(full.get("rope_theta", hf.get("rope_theta", 1e4))),
              _scaling(full), float(local["rope_theta"]) if local else None)
    return float(params.get("rope_theta", hf.get("rope_theta", 1e4))), \
        _scaling(params), hf.get("rope_local_base_freq")
  theta = float(hf.get("rope_theta", 1e4))
  local = hf.get("rope_local_base_freq") if fam == "gemma3_text" else None
  return theta, _scaling(hf.get("rope_scaling")), local


def model_config(hf: Mapping[str, Any], *, dtype: str = "float32",
                 param_dtype: str | None = None,
                 max_seq_len: int | None = None,
                 value_range: tuple[float, float] = (-1.0, 1.0)
                 ) -> ModelConfig:
  """The :class:`ModelConfig` of a Hugging Face ``config.json`` dict.

  Args:
    hf: the parsed ``config.json``.
    dtype: computation dtype (logits, values and losses stay float32).
    param_dtype: parameter dtype (default: ``dtype``).
    max_seq_len: context to allow (default: ``max_position_embeddings``).
    value_range: the value head's range.
  """
  fam = family(hf)
  theta, scaling, local_theta = _rope(hf, fam)
  act = hf.get("hidden_activation") or hf.get("hidden_act", "silu")
  if act not in _ACTIVATIONS:
    raise CheckpointError(f"Activation {act!r} is not supported; supported: "
                          f"{sorted(_ACTIVATIONS)}.")
  if hf.get("mlp_bias"):
    raise CheckpointError("mlp_bias=true is not supported (no supported "
                          "family publishes it).")
  if fam == "qwen2" and hf.get("use_sliding_window"):
    raise CheckpointError("Qwen2 use_sliding_window=true is not supported; "
                          "published Qwen2.5 checkpoints set it false.")
  d, h = int(hf["hidden_size"]), int(hf["num_attention_heads"])
  n = int(hf["num_hidden_layers"])
  head_dim = int(hf.get("head_dim") or d // h)
  gemma = fam == "gemma3_text"
  layer_types = None
  if gemma:
    types = hf.get("layer_types")
    if types is None:
      pattern = int(hf.get("sliding_window_pattern", 6))
      types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
               for i in range(n)]
    layer_types = tuple("sliding" if t == "sliding_attention" else "full"
                        for t in types)
    if any(t not in ("sliding_attention", "full_attention") for t in types):
      raise CheckpointError(f"Unknown layer_types {types!r}.")
  bias = bool(hf.get("attention_bias", False))
  default_tied = gemma
  return ModelConfig(
      vocab_size=int(hf["vocab_size"]), num_layers=n, d_model=d, num_heads=h,
      num_kv_heads=int(hf.get("num_key_value_heads") or h),
      head_dim=head_dim, mlp_dim=int(hf["intermediate_size"]),
      max_seq_len=int(max_seq_len or hf.get("max_position_embeddings", 4096)),
      rope_theta=theta, dtype=dtype, param_dtype=param_dtype or dtype,
      value_range=tuple(value_range),
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", default_tied)),
      qkv_bias=bias or fam == "qwen2", o_bias=bias,
      qk_norm=fam in ("qwen3", "gemma3_text"),
      norm_offset=1.0 if gemma else 0.0, scale_embeddings=gemma,
      activation=_ACTIVATIONS[act], sandwich_norm=gemma,
      query_pre_attn_scalar=(float(hf.get("query_pre_attn_scalar", 256))
                             if gemma else None),
      # Gemma 3's reference implementation reads attn_logit_softcapping but
      # never applies it (q/k norm replaced it; published configs set it
      # null), so neither do we; final_logit_softcapping is applied.
      attn_logit_softcap=None,
      final_logit_softcap=hf.get("final_logit_softcapping") if gemma else None,
      rope_scaling=scaling, layer_types=layer_types,
      sliding_window=int(hf["sliding_window"]) if gemma else None,
      rope_local_theta=float(local_theta) if gemma and local_theta else None)


# ---------------------------------------------------------------------------
# safetensors files


@dataclasses.dataclass(frozen=True)
class _Entry:
  file: str
  dtype: str
  shape: tuple[int, ...]
  offset: int  # absolute byte offset in the file


def _read_header(file: str) -> dict[str, _Entry]:
  size = os.path.getsize(file)
  with open(file, "rb") as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise CheckpointError(f"{file} is not a safetensors file (too short).")
    (n,) = struct.unpack("<Q", raw)
    if n > size - 8:
      raise CheckpointError(f"{file} is corrupt: its header claims {n} bytes "
                            f"but the file has {size}.")
    try:
      header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{file} has a corrupt safetensors header: {e}"
                            ) from e
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    begin, end = info["data_offsets"]
    e = _Entry(file=file, dtype=info["dtype"], shape=tuple(info["shape"]),
               offset=8 + n + begin)
    if 8 + n + end > size:
      raise CheckpointError(f"{file} is truncated: tensor {name!r} ends at "
                            f"byte {8 + n + end} of {size}.")
    out[name] = e
  return out


def tensor_index(path: str) -> dict[str, _Entry]:
  """``{tensor name: where it is}`` over a directory's safetensors files."""
  index = os.path.join(path, "model.safetensors.index.json")
  single = os.path.join(path, "model.safetensors")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    files = sorted(set(weight_map.values()))
  elif os.path.exists(single):
    files = ["model.safetensors"]
  else:
    raise CheckpointError(
        f"{path!r} has no model.safetensors nor model.safetensors.index.json "
        "(only the safetensors format is read; convert .bin/.pth first).")
  out = {}
  for name in files:
    file = os.path.join(path, name)
    if not os.path.exists(file):
      raise CheckpointError(f"{file} is listed in the index but missing.")
    out.update(_read_header(file))
  return out


def _read(entry: _Entry, name: str, index=None) -> np.ndarray:
  """The tensor (or ``index`` of it) as a NumPy array backed by its bytes."""
  if entry.dtype not in _ST_DTYPES:
    raise CheckpointError(
        f"Tensor {name!r} has dtype {entry.dtype}, which is not supported "
        f"(supported: {', '.join(_ST_DTYPES)}; dequantise it first).")
  mm = np.memmap(entry.file, dtype=_ST_DTYPES[entry.dtype], mode="r",
                 offset=entry.offset, shape=entry.shape)
  return mm if index is None else mm[index]


def _scratch_copy(x: np.ndarray, dtype) -> np.ndarray:
  """``x`` as a C-contiguous ``dtype`` array in its own anonymous mapping.

  Transposed or cast copies are made here rather than with ``np.array``: a
  mapping is returned to the OS as soon as the array is freed, whereas
  malloc'd blocks of a few MB stay in the heap and would make the loader's
  resident memory creep up tensor after tensor.
  """
  n = max(int(np.prod(x.shape)) * np.dtype(dtype).itemsize, 1)
  out = np.frombuffer(mmap.mmap(-1, n), dtype=dtype,
                      count=int(np.prod(x.shape))).reshape(x.shape)
  np.copyto(out, x, casting="unsafe")
  return out


# ---------------------------------------------------------------------------
# Parameter names


def _hf_name(path: tuple) -> tuple[str, bool]:
  """``(Hugging Face tensor name, transposed?)`` of one of our parameters."""
  parts = [str(p) for p in path]
  leaf = parts[-1]
  transpose = leaf == "kernel"
  parts[-1] = {"kernel": "weight", "scale": "weight", "embedding": "weight",
               "bias": "bias"}[leaf]
  name = ".".join(parts)
  return (name if parts[0] == "lm_head" else "model." + name), transpose


def _key(p) -> Any:
  return getattr(p, "key", getattr(p, "idx", p))


def abstract_params(config: ModelConfig) -> PyTree:
  """The pure parameter dict of ``config``'s model, as ShapeDtypeStructs."""
  model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _flat(tree: PyTree) -> list[tuple[tuple, Any]]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(tuple(_key(p) for p in path), leaf) for path, leaf in leaves]


def _unflatten(like: PyTree, values: list) -> PyTree:
  return jax.tree.unflatten(jax.tree.structure(like), values)


# ---------------------------------------------------------------------------
# Loading


def load_params(path: str, config: ModelConfig, *,
                shardings: PyTree | Callable | None = None) -> PyTree:
  """Reads the parameters of ``config``'s model from checkpoint ``path``.

  Args:
    path: the checkpoint directory.
    config: from :func:`model_config` of the same directory.
    shardings: where each parameter goes: a pytree of
      ``jax.sharding.Sharding`` shaped like the parameters (e.g. from
      ``models.sharding``), a function ``(path tuple, shape) -> Sharding``,
      or None (the default device).

  Returns:
    The pure parameter dict (``nnx.to_pure_dict`` layout), in
    ``config.param_dtype``.
  """
  index = tensor_index(path)
  value_head = {}
  vh_file = os.path.join(path, VALUE_HEAD_FILE)
  if os.path.exists(vh_file):
    value_head = _read_header(vh_file)
  abstract = abstract_params(config)
  flat = _flat(abstract)
  if shardings is None:
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    sh = [dev] * len(flat)
  elif callable(shardings):
    sh = [shardings(p, a.shape) for p, a in flat]
  else:
    sh = jax.tree.leaves(shardings,
                         is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    if len(sh) != len(flat):
      raise ValueError(f"shardings has {len(sh)} leaves but the model has "
                       f"{len(flat)} parameters.")
  dtype = np.dtype(config.params_dtype)
  used, out = set(), []
  for (p, a), sharding in zip(flat, sh):
    if p[0] == "value_head":
      out.append(_value_head(p, a, value_head, sharding, dtype, vh_file))
      continue
    name, transpose = _hf_name(p)
    if name not in index:
      raise CheckpointError(
          f"Tensor {name!r} is missing from {path!r}; the config "
          f"({family(read_config(path))}, tie_word_embeddings="
          f"{config.tie_embeddings}) needs it.")
    entry = index[name]
    want = a.shape[::-1] if transpose else a.shape
    if entry.shape != tuple(want):
      raise CheckpointError(
          f"Tensor {name!r} in {os.path.basename(entry.file)} has shape "
          f"{list(entry.shape)} but config.json implies {list(want)}.")
    used.add(name)

    def cb(idx, entry=entry, name=name, transpose=transpose):
      if transpose:
        x = _read(entry, name, tuple(reversed(idx))).T
      else:
        x = _read(entry, name, idx)
      if x.dtype == dtype and x.flags.c_contiguous:
        return x  # the mapped bytes themselves; the device copies them
      return _scratch_copy(x, dtype)

    # Wait for the copy so that at most one tensor's host bytes are alive.
    out.append(jax.block_until_ready(
        jax.make_array_from_callback(a.shape, sharding, cb)))
  skipped = sorted(set(index) - used - {"lm_head.weight"})
  skipped = [s for s in skipped if not s.endswith("rotary_emb.inv_freq")]
  if skipped:
    logging.warning("Ignored %d tensors of %s that the model does not use, "
                    "e.g. %s", len(skipped), path, skipped[:3])
  return _unflatten(abstract, out)


def _value_head(p, a, entries, sharding, dtype, file):
  name = "value_head." + ("weight" if p[-1] == "kernel" else "bias")
  if name in entries:
    e = entries[name]
    want = a.shape[::-1] if p[-1] == "kernel" else a.shape
    if e.shape != tuple(want):
      raise CheckpointError(f"{file}: {name!r} has shape {list(e.shape)}, "
                            f"expected {list(want)}.")
    x = _read(e, name)
    host = np.array(x.T if p[-1] == "kernel" else x, dtype=dtype)
  else:
    host = np.zeros(a.shape, dtype)  # a new head: values start mid-range
  return jax.device_put(host, sharding)


def check_vocab(config: ModelConfig, tokenizer_vocab_size: int) -> None:
  """Raises if a tokenizer's ids do not all fit the embedding."""
  if tokenizer_vocab_size > config.vocab_size:
    raise CheckpointError(
        f"The tokenizer has {tokenizer_vocab_size} tokens but the model's "
        f"embedding has only {config.vocab_size} rows: the tokenizer does not "
        "belong to this checkpoint.")


def load(path: str, *, dtype: str = "float32", param_dtype: str | None = None,
         max_seq_len: int | None = None,
         value_range: tuple[float, float] = (-1.0, 1.0),
         shardings: PyTree | Callable | None = None
         ) -> tuple[ModelConfig, PyTree]:
  """``(ModelConfig, params)`` of the checkpoint in directory ``path``.

  See :func:`model_config` and :func:`load_params` for the arguments. Checks
  that ``tokenizer.json`` (where present) fits the embedding.
  """
  hf = read_config(path)
  config = model_config(hf, dtype=dtype, param_dtype=param_dtype,
                        max_seq_len=max_seq_len, value_range=value_range)
  tok = os.path.join(path, "tokenizer.json")
  if os.path.exists(tok):
    with open(tok) as f:
      t = json.load(f)
    ids = list(t.get("model", {}).get("vocab", {}).values()) if isinstance(
        t.get("model", {}).get("vocab"), dict) else []
    ids += [a["id"] for a in t.get("added_tokens", [])]
    if ids:
      check_vocab(config, max(ids) + 1)
  return config, load_params(path, config, shardings=shardings)


def to_model(config: ModelConfig, params: PyTree) -> Transformer:
  """An ``nnx`` :class:`Transformer` holding ``params`` (no copy)."""
  model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  return model


# ---------------------------------------------------------------------------
# Export


def hf_config(config: ModelConfig, like: Mapping[str, Any] | None = None
              ) -> dict:
  """A ``config.json`` dict for ``config``: ``like`` (the source checkpoint's)
  with the dtype updated, or a Llama one for a native tsearch model."""
  dtype = {"float32": "float32", "bfloat16": "bfloat16",
           "float16": "float16"}[config.param_dtype]
  if like is not None:
    out = dict(like)
    out["torch_dtype"] = dtype
    if "dtype" in out:
      out["dtype"] = dtype
    return out
  plain = ModelConfig(
      vocab_size=config.vocab_size, num_layers=config.num_layers,
      d_model=config.d_model, num_heads=config.num_heads,
      num_kv_heads=config.num_kv_heads, head_dim=config.head_dim,
      mlp_dim=config.mlp_dim, max_seq_len=config.max_seq_len,
      rope_theta=config.rope_theta, dtype=config.dtype,
      param_dtype=config.param_dtype, value_range=config.value_range,
      norm_eps=config.norm_eps, tie_embeddings=config.tie_embeddings,
      rope_scaling=config.rope_scaling)
  if plain != config:
    raise ValueError("Only Llama-layout models can be exported without the "
                     "source checkpoint's config.json; pass like=.")
  out = {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": config.vocab_size, "hidden_size": config.d_model,
      "intermediate_size": config.mlp_dim,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads, "head_dim": config.head_dim,
      "max_position_embeddings": config.max_seq_len,
      "rope_theta": config.rope_theta, "rms_norm_eps": config.norm_eps,
      "tie_word_embeddings": config.tie_embeddings, "hidden_act": "silu",
      "attention_bias": False, "mlp_bias": False, "torch_dtype": dtype,
      "rope_scaling": None,
  }
  if config.rope_scaling is not None:
    r = config.rope_scaling
    out["rope_scaling"] = (
        {"rope_type": "linear", "factor": r.factor} if r.kind == "linear" else
        {"rope_type": "llama3", "factor": r.factor,
         "low_freq_factor": r.low_freq_factor,
         "high_freq_factor": r.high_freq_factor,
         "original_max_position_embeddings":
             r.original_max_position_embeddings})
  return out


def save(path: str, config: ModelConfig, params: PyTree, *,
         like: str | None = None, dtype: str | None = None,
         max_shard_bytes: int = 4 << 30) -> None:
  """Writes ``params`` as a Hugging Face checkpoint directory.

  Args:
    path: the directory to write (created; existing weight files replaced).
    config: the model's config.
    params: pure parameter dict (sharded arrays are gathered one at a time).
    like: the source checkpoint directory: its ``config.json`` is kept (dtype
      updated) and its tokenizer files are copied. Without it, a Llama config
      is written for a Llama-layout model.
    dtype: dtype of the written tensors (default: each parameter's own).
    max_shard_bytes: above this, weights are split into numbered
      ``model-0000x-of-0000y.safetensors`` files with an index.

  The value head goes to ``value_head.safetensors`` beside the weights (any
  engine serving the policy ignores it); :func:`load` reads it back, so
  load -> save -> load is exact.
  """
  os.makedirs(path, exist_ok=True)
  src = read_config(like) if like else None
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_config(config, src), f, indent=2, sort_keys=True)
  if like:
    for name in _TOKENIZER_FILES:
      file = os.path.join(like, name)
      if os.path.exists(file) and os.path.abspath(file) != os.path.abspath(
          os.path.join(path, name)):
        shutil.copy(file, os.path.join(path, name))
  for old in os.listdir(path):
    if old.endswith(".safetensors") or old == "model.safetensors.index.json":
      os.remove(os.path.join(path, old))
  cast = np.dtype(getattr(np, dtype, None) or getattr(ml_dtypes, dtype)) \
      if dtype else None
  # Plan the shards from the shapes, then gather and write one shard at a
  # time: host memory holds at most one shard.
  plan, head = [[]], {}
  size = 0
  for p, leaf in _flat(params):
    name, transpose = _hf_name(p)
    nbytes = int(np.prod(leaf.shape)) * (cast or np.dtype(leaf.dtype)).itemsize
    if p[0] == "value_head":
      head[name[len("model."):]] = (leaf, transpose)
      continue
    if plan[-1] and size + nbytes > max_shard_bytes:
      plan.append([])
      size = 0
    plan[-1].append((name, leaf, transpose))
    size += nbytes

  def host(leaf, transpose, what):
    x = np.asarray(jax.device_get(leaf))
    if cast is not None:
      x = x.astype(cast)
    if np.dtype(x.dtype) not in _NP_TO_ST:
      raise ValueError(f"Cannot export dtype {x.dtype} of {what}.")
    return np.ascontiguousarray(x.T if transpose else x)

  names = (["model.safetensors"] if len(plan) == 1 else
           [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors"
            for i in range(len(plan))])
  weight_map, total = {}, 0
  for file, shard in zip(names, plan):
    tensors = {n: host(leaf, t, n) for n, leaf, t in shard}
    total += sum(x.nbytes for x in tensors.values())
    save_file(tensors, os.path.join(path, file), metadata={"format": "pt"})
    weight_map.update({n: file for n in tensors})
    del tensors
  if len(plan) > 1:
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total},
                 "weight_map": weight_map}, f, indent=2, sort_keys=True)
  if head:
    save_file({n: host(leaf, t, n) for n, (leaf, t) in head.items()},
              os.path.join(path, VALUE_HEAD_FILE),
              metadata={"format": "tsearch"})
