"""Step-level MCTS over a Qwen2.5-0.5B-shaped model vs plain batched sampling.

Builds a model shaped like Qwen2.5-0.5B (``bench/load_checkpoint.py``'s
``QWEN25_05B``: d 896, 14 heads / 2 KV heads, MLP 4864, vocab 151936, tied
embeddings; ``--layers`` of its 24 layers) with random weights, bfloat16 on a
GPU/TPU and float32 on a CPU, and times on the same batch of random prompts:

  search    ``tsearch.lm_search`` with ``LMSearchConfig(mode='step')``: PUCT,
            ``--simulations`` expansions, each sampling ``--children`` (K)
            candidate steps of up to ``--step_length`` (S) tokens in one
            batched decode over B x K continuations.
  sampling  the search family's decoder (``tsearch.get_algorithm('sampling')``,
            the KV-cached ``rows`` decoder): one sampled answer per problem,
            ``--num_steps`` x S tokens, same temperature.
  best_of_n the same decoder with ``budget=K`` (B x K rows per call, as many
            rows as the search's step decode; for reference).

The environment is task-free: every token of the model's vocabulary is legal,
a step ends at the delimiter token (``\\n``, 198) or after S tokens, the
episode after ``--num_steps`` steps (or at EOS); reward 0. Tokens are the
ones each method actually forwards (``tokens_forwarded``: the prompt once,
then every token fed through the model, for search including the chosen
step's re-forward at expansion). MFU = analytic model FLOPs
(``ModelConfig.flops_per_token``; prompt tokens at context P / 2, the others
at P + T / 2) per second over the device's peak: a table by device kind for
accelerators (bf16 dense), on a CPU the best float32 matmul measured in this
run. The "after P" column is tokens/s less the prompt: (tokens - B x P) /
(time - the B x P prefill's own time, measured alone in the same run).

  python bench/lm_search_large.py                          # 24 layers
  python bench/lm_search_large.py --layers 2 --batch 2 --simulations 8

Last line, exactly::

  lm_search_large step_tokens_over_generate=<r> mfu_pct=<m>

(``r`` = search tokens/s over sampling tokens/s; goal >= 0.8.)
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
import models  # noqa: E402
import tsearch  # noqa: E402
from bench.load_checkpoint import QWEN25_05B  # noqa: E402
from models import hf  # noqa: E402

# Dense bf16 peak FLOP/s by device kind (substring, lower case); first match.
PEAK_FLOPS = (
    ("h200", 989e12), ("h100", 989e12), ("a100", 312e12), ("l4", 121e12),
    ("v6 lite", 918e12), ("v6e", 918e12), ("v5 lite", 197e12),
    ("v5e", 197e12), ("v5p", 459e12), ("v4", 275e12))


@chex.dataclass(frozen=True)
class StepState:
  in_step: chex.Array  # [B] int32 tokens of the current step so far
  steps: chex.Array  # [B] int32 finished steps
  done: chex.Array  # [B] bool


@dataclasses.dataclass(frozen=True)
class _Vocab:
  size: int


@dataclasses.dataclass(frozen=True)
class FreeTextEnv:
  """Any token is legal; steps of <= ``step_length`` tokens ending at the
  delimiter, ``num_steps`` steps or EOS per episode; reward 0.

  Duck-typed for ``lm_search`` (``tests/lm_toy_env.py``'s interface) and for
  the search family (``num_players``, ``vocab.size``, ``max_*_length``,
  ``pad_id``).
  """
  vocab_size: int
  step_length: int
  num_steps: int
  max_prompt_length: int
  step_delimiter: int = 198  # Qwen2.5's "\n"
  eos_id: int = 151643  # <|endoftext|>
  pad_id: int = 0
  num_players: int = 1
  name: str = "free_text"

  @property
  def vocab(self) -> _Vocab:
    return _Vocab(self.vocab_size)

  @property
  def max_answer_length(self) -> int:
    return self.num_steps * self.step_length

  def init_state(self, prompt_tokens):
    zero = jnp.zeros(prompt_tokens.shape[:1], jnp.int32)
    return StepState(in_step=zero, steps=zero, done=zero.astype(bool))

  def step(self, state, token):
    active = ~state.done
    end = (token == self.step_delimiter) | (
        state.in_step + 1 >= self.step_length)
    steps = state.steps + (active & end).astype(jnp.int32)
    in_step = jnp.where(active, jnp.where(end, 0, state.in_step + 1),
                        state.in_step)
    done = state.done | (active & ((token == self.eos_id)
                                   | (steps >= self.num_steps)))
    return StepState(in_step=in_step, steps=steps, done=done)

  def step_ended(self, state, token):
    return (token == self.step_delimiter) | (state.in_step == 0)

  def legal_mask(self, state):
    return jnp.ones(state.done.shape + (self.vocab_size,), bool)

  def is_terminal(self, state):
    return state.done

  def reward(self, state):
    return jnp.zeros(state.done.shape, jnp.float32)

  def discount(self, state):
    return jnp.where(state.done, 0.0, 1.0)


def matmul_flops_per_s(n=2048, repeats=3, trials=3) -> float:
  """Best of ``trials`` timings of a jitted float32 ``n x n`` matmul."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  best = float("inf")
  for _ in range(trials):
    t0 = time.perf_counter()
    for _ in range(repeats):
      jax.block_until_ready(f(a))
    best = min(best, (time.perf_counter() - t0) / repeats)
  return 2 * n ** 3 / best


def peak_flops(kind: str) -> tuple[float, str]:
  k = kind.lower()
  for name, flops in PEAK_FLOPS:
    if name in k:
      return flops, f"table ({name}, dense bf16)"
  if jax.default_backend() == "cpu":
    return 0.0, "measured"
  raise SystemExit(f"No peak FLOP/s known for device kind {kind!r}; add it "
                   "to PEAK_FLOPS.")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=8, help="B problems")
  ap.add_argument("--simulations", type=int, default=16)
  ap.add_argument("--children", type=int, default=4, help="K steps per node")
  ap.add_argument("--step_length", type=int, default=16, help="S tokens")
  ap.add_argument("--num_steps", type=int, default=4,
                  help="steps per episode (tree max_depth)")
  ap.add_argument("--prompt_len", type=int, default=64)
  ap.add_argument("--layers", type=int, default=24)
  ap.add_argument("--temperature", type=float, default=1.0)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--dtype", default="auto",
                  choices=("auto", "float32", "bfloat16"))
  ap.add_argument("--no_best_of_n", action="store_true",
                  help="skip the best-of-K reference row")
  args = ap.parse_args(argv)
  b, k, s, n_steps = args.batch, args.children, args.step_length, args.num_steps
  p, sims = args.prompt_len, args.simulations
  backend = jax.default_backend()
  dtype = args.dtype
  if dtype == "auto":
    dtype = "bfloat16" if backend in ("gpu", "tpu") else "float32"
  t_len = n_steps * s
  hf_cfg = dict(QWEN25_05B, num_hidden_layers=args.layers)
  cfg = hf.model_config(hf_cfg, dtype=dtype, param_dtype=dtype,
                        max_seq_len=max(4096, p + t_len))
  t0 = time.perf_counter()
  g, st = nnx.split(models.Transformer(cfg, rngs=nnx.Rngs(0)))
  jax.block_until_ready(st)
  n_params = sum(x.size for x in jax.tree.leaves(st))
  init_s = time.perf_counter() - t0

  kind = jax.devices()[0].device_kind
  peak, peak_src = peak_flops(kind)
  if not peak:
    peak = matmul_flops_per_s()
  env = FreeTextEnv(vocab_size=cfg.vocab_size, step_length=s,
                    num_steps=n_steps, max_prompt_length=p)
  prompt = jax.random.randint(jax.random.key(1), (b, p), 1, cfg.vocab_size)
  lengths = jnp.full((b,), p, jnp.int32)
  key = jax.random.key(0)
  print(f"device={kind} backend={backend} jax={jax.__version__} "
        f"dtype={dtype} (bfloat16 on GPU/TPU, float32 on CPU)")
  print(f"model: Qwen2.5-0.5B shape, L={cfg.num_layers} D={cfg.d_model} "
        f"H={cfg.num_heads} Hkv={cfg.num_kv_heads} Dh={cfg.head_dim} "
        f"F={cfg.mlp_dim} V={cfg.vocab_size}, {n_params / 1e6:.1f}M params, "
        f"random (init {init_s:.1f} s)")
  print(f"B={b} P={p} sims={sims} K={k} S={s} steps/episode={n_steps} "
        f"T={t_len} temperature={args.temperature} repeats={args.repeats}")

  config = tsearch.LMSearchConfig(
      mode="step", policy="puct", num_simulations=sims, num_children=k,
      step_length=s, max_depth=n_steps, step_temperature=args.temperature)
  methods = {
      "search": jax.jit(lambda st, pt, pl, key: tsearch.lm_search(
          g, st, env, pt, pl, key, config=config)),
      "sampling": jax.jit(lambda st, pt, pl, key: tsearch.get_algorithm(
          "sampling")(g, st, env, pt, pl, key, budget=1,
                      temperature=args.temperature)),
  }
  if not args.no_best_of_n:
    methods[f"best_of_{k}"] = jax.jit(
        lambda st, pt, pl, key: tsearch.get_algorithm("best_of_n")(
            g, st, env, pt, pl, key, budget=k, aggregate="best_value",
            temperature=args.temperature))

  # The prompt's prefill alone (both methods run exactly one, of B x P):
  # timed to also report tokens/s after the prompt.
  pos = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
  prefill = jax.jit(lambda st, pt, pl, key: models.forward(
      g, st, pt, pos, token_mask=pos < pl[:, None]))
  res = {}
  jax.block_until_ready(prefill(st, prompt, lengths, key))
  prefill_times = []
  for name, fn in methods.items():  # compile + warm up
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(st, prompt, lengths, key))
    res[name] = dict(compile_s=time.perf_counter() - t0, times=[],
                     tokens=int(np.sum(out.tokens_forwarded)),
                     calls=float(np.mean(out.model_calls)))
    if name == "search":
      t = out.search_tree
      res[name]["depth"] = int(np.max(t.node_depth))
      res[name]["nodes"] = float(np.mean(t.num_nodes))
    print(f"  {name}: compile + first call {res[name]['compile_s']:.1f} s",
          flush=True)
  for _ in range(args.repeats):  # interleaved: the machine may be shared
    t0 = time.perf_counter()
    jax.block_until_ready(prefill(st, prompt, lengths, key))
    prefill_times.append(time.perf_counter() - t0)
    for name, fn in methods.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(st, prompt, lengths, key))
      res[name]["times"].append(time.perf_counter() - t0)
  if backend == "cpu":  # shared CPU: the best matmul rate seen as the peak
    peak = max(peak, matmul_flops_per_s())
    peak_src = "measured: best jitted float32 2048^3 matmul in this run"

  prefill_fpt = cfg.flops_per_token(p // 2)
  gen_fpt = cfg.flops_per_token(p + t_len // 2)
  print(f"peak {peak / 1e12:.3f} TFLOP/s ({peak_src}); model "
        f"{gen_fpt / 1e9:.3f} GFLOP/token at context {p + t_len // 2}")
  t_pre = statistics.median(prefill_times)
  print(f"prefill of the B x P prompts alone: {t_pre:.3f} s (median)")
  print(f"{'method':<11} {'median s':>9} {'min s':>8} {'sims/s':>8} "
        f"{'tokens':>7} {'calls/row':>9} {'tokens/s':>9} {'after P':>8} "
        f"{'MFU %':>7}")
  for name, r in res.items():
    dt = statistics.median(r["times"])
    r["dt"] = dt
    r["tok_s"] = r["tokens"] / dt
    r["gen_tok_s"] = (r["tokens"] - b * p) / max(dt - t_pre, 1e-9)
    flops = b * p * prefill_fpt + (r["tokens"] - b * p) * gen_fpt
    r["mfu"] = 100 * flops / dt / peak
    sims_s = f"{b * sims / dt:8.2f}" if name == "search" else f"{'-':>8}"
    print(f"{name:<11} {dt:>9.3f} {min(r['times']):>8.3f} {sims_s} "
          f"{r['tokens']:>7d} {r['calls']:>9.0f} {r['tok_s']:>9.1f} "
          f"{r['gen_tok_s']:>8.1f} {r['mfu']:>7.2f}")
  srch = res["search"]
  per_exp = (s - 1) * k + s
  print(f"search: tree depth {srch['depth']}, {srch['nodes']:.0f} nodes/row; "
        f"per expansion {(s - 1) * k} sampled + {s} re-forwarded tokens "
        f"({100 * s / per_exp:.0f}% re-forward)")
  r = srch["tok_s"] / res["sampling"]["tok_s"]
  extra = ""
  if f"best_of_{k}" in res:
    extra = (f"; over best_of_{k} (B x K rows): "
             f"{srch['tok_s'] / res[f'best_of_{k}']['tok_s']:.3f}")
  print(f"search tokens/s over sampling: {r:.3f} (goal >= 0.8){extra}")
  print(f"after the prompt (tokens and time less the B x P prefill): "
        f"{srch['gen_tok_s'] / res['sampling']['gen_tok_s']:.3f}")
  print(f"lm_search_large step_tokens_over_generate={r:.3f} "
        f"mfu_pct={srch['mfu']:.2f}")


if __name__ == "__main__":
  main()
