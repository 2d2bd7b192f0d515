"""How fast, and in how little host memory, a Hugging Face checkpoint loads.

Writes a random checkpoint shaped like Qwen2.5-0.5B (24 layers, d 896, 14
heads / 2 KV heads, vocab 151936, tied embeddings; bfloat16, in two
safetensors shards with their index), then loads it with
:func:`models.hf.load` in a fresh process and measures the load's wall time
and its peak resident memory above the process's memory just before the load,
as a ratio to the loaded parameters' size (goal <= 1.3: one model plus about
one tensor, never two copies of the model)::

  python bench/load_checkpoint.py                 # 0.5B-shaped, bfloat16
  python bench/load_checkpoint.py --layers 4      # a quicker smoke run

Last line, exactly::

  load_checkpoint params_m=<p> seconds=<s> peak_rss_over_size=<r>
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

QWEN25_05B = dict(
    architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=896,
    intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    hidden_act="silu", torch_dtype="bfloat16", rope_scaling=None,
    use_sliding_window=False)


def write_checkpoint(path: str, hf: dict, seed: int = 0) -> int:
  """Writes random bfloat16 weights for ``hf`` in two shards; returns the
  number of parameters."""
  import ml_dtypes
  from safetensors.numpy import save_file
  rng = np.random.default_rng(seed)
  d, f = hf["hidden_size"], hf["intermediate_size"]
  h, kv = hf["num_attention_heads"], hf["num_key_value_heads"]
  dh = d // h

  def rand(*shape):
    x = rng.standard_normal(shape, dtype=np.float32) * 0.02
    return x.astype(ml_dtypes.bfloat16)

  names = {"model.embed_tokens.weight": (hf["vocab_size"], d),
           "model.norm.weight": (d,)}
  for i in range(hf["num_hidden_layers"]):
    p = f"model.layers.{i}."
    names.update({
        p + "self_attn.q_proj.weight": (h * dh, d),
        p + "self_attn.q_proj.bias": (h * dh,),
        p + "self_attn.k_proj.weight": (kv * dh, d),
        p + "self_attn.k_proj.bias": (kv * dh,),
        p + "self_attn.v_proj.weight": (kv * dh, d),
        p + "self_attn.v_proj.bias": (kv * dh,),
        p + "self_attn.o_proj.weight": (d, h * dh),
        p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
        p + "mlp.down_proj.weight": (d, f),
        p + "input_layernorm.weight": (d,),
        p + "post_attention_layernorm.weight": (d,)})
  order = list(names)
  half = len(order) // 2
  weight_map, total = {}, 0
  for k, part in enumerate((order[:half], order[half:])):
    file = f"model-{k + 1:05d}-of-00002.safetensors"
    tensors = {n: rand(*names[n]) for n in part}
    total += sum(x.size for x in tensors.values())
    save_file(tensors, os.path.join(path, file), metadata={"format": "pt"})
    weight_map.update({n: file for n in part})
    del tensors
  with open(os.path.join(path, "model.safetensors.index.json"), "w") as fh:
    json.dump({"metadata": {"total_size": 2 * total},
               "weight_map": weight_map}, fh)
  with open(os.path.join(path, "config.json"), "w") as fh:
    json.dump(hf, fh)
  return total


def _rss_bytes() -> int:
  with open("/proc/self/statm") as fh:
    return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
  # VmHWM, not getrusage's ru_maxrss: the latter survives exec, so a child
  # would report its parent's peak (the writer's) when that was higher.
  with open("/proc/self/status") as fh:
    for line in fh:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measure(path: str, dtype: str) -> None:
  """(Child process) loads ``path`` and prints one JSON line."""
  import jax
  jax.devices()  # backend up before the baseline
  from models import hf
  base = _rss_bytes()
  t0 = time.perf_counter()
  cfg, params = hf.load(path, dtype=dtype, param_dtype=dtype)
  jax.block_until_ready(params)
  seconds = time.perf_counter() - t0
  peak = _peak_rss_bytes()
  leaves = jax.tree.leaves(params)
  size = sum(x.size * x.dtype.itemsize for x in leaves)
  print(json.dumps(dict(params=sum(x.size for x in leaves), seconds=seconds,
                        size=size, base=base, peak=peak,
                        layers=cfg.num_layers)))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--layers", type=int, default=24,
                  help="decoder layers (24 is Qwen2.5-0.5B)")
  ap.add_argument("--dtype", default="bfloat16",
                  help="parameter dtype to load into")
  ap.add_argument("--dir", default=None, help="where to write the checkpoint "
                  "(default: a temporary directory, removed afterwards)")
  ap.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args._measure:
    measure(args._measure, args.dtype)
    return
  hf_cfg = dict(QWEN25_05B, num_hidden_layers=args.layers)
  with tempfile.TemporaryDirectory(dir=args.dir) as d:
    t0 = time.perf_counter()
    n = write_checkpoint(d, hf_cfg)
    print(f"wrote {n / 1e6:.1f}M random bfloat16 parameters in two shards "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    out = subprocess.run(
        [sys.executable, __file__, "--_measure", d, "--dtype", args.dtype],
        check=True, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=os.path.dirname(
            os.path.dirname(os.path.abspath(__file__)))))
  r = json.loads(out.stdout.strip().splitlines()[-1])
  ratio = (r["peak"] - r["base"]) / r["size"]
  print(f"loaded {r['params'] / 1e6:.1f}M parameters ({r['size'] / 2**20:.0f} "
        f"MiB as {args.dtype}) in {r['seconds']:.2f} s; resident memory "
        f"before {r['base'] / 2**20:.0f} MiB, peak {r['peak'] / 2**20:.0f} MiB")
  print(f"load_checkpoint params_m={r['params'] / 1e6:.1f} "
        f"seconds={r['seconds']:.2f} peak_rss_over_size={ratio:.2f}")


if __name__ == "__main__":
  main()
