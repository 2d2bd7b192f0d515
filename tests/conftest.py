"""Test setup: 8 virtual CPU devices, so data-parallel code is tested for real.

The flags must be set before jax is imported anywhere in the test process.

Most of the suite's time is XLA compiling: the same train step, rollout and
search are compiled again by each test that builds them (a new closure is a
new jit cache entry), by each subprocess the CLI tests start (kill -9 and
resume runs the same step three times) and by the notebooks' kernels. One
persistent compilation cache per test run, shared by the xdist workers and
every subprocess through the environment, compiles each program once. It is
made fresh for each run and removed at the end, so no run reads another's
entries; the cache key is the whole program with jax's version and flags, so
a hit is the executable the miss would have built.
"""
import atexit
import os
import shutil
import tempfile

_flags = os.environ.get("XLA_FLAGS", "")
_flags += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in _flags:
  # LLVM at -O0: the same semantics (no fast-math either way) and programs
  # that run a little slower, but the tests' tiny programs spend most of
  # their time compiling, and this cuts a step rollout's compile by a third
  # (40 s -> 25 s on a 2-core CPU). Set the flag yourself to test at -O2.
  _flags += " --xla_backend_optimization_level=0"
if "xla_cpu_use_fusion_emitters" not in _flags:
  # XLA's older loop emitters for fusions: the same operations (rounding
  # may differ in the last bits, so a long training run can end elsewhere;
  # experiments/main_job.md), compiled faster than by the MLIR fusion
  # emitters: a step rollout 26 s -> 21 s, the whole suite on 2 cores
  # 22 -> 13 min.
  _flags += " --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# On by default (TSEARCH_TEST_JAX_CACHE=0 turns it off). It was opt-in for
# a while after a worker segfaulted inside jax 0.10.2's CPU executable
# serialisation (a cache write) in about one full run in three. The likely
# cause is the one found later for the same crashes without the cache: a
# worker's memory mappings reaching vm.max_map_count (every mmap then
# fails, in a compile or a serialisation alike), which
# _release_compiled_programs below now prevents.
if (os.environ.get("TSEARCH_TEST_JAX_CACHE", "1") == "1"
    and "JAX_COMPILATION_CACHE_DIR" not in os.environ):
  # The first process to load this file (the xdist controller, or pytest
  # itself without -n) makes the directory; workers and subprocesses inherit
  # the variable and share it.
  _cache_dir = tempfile.mkdtemp(prefix="tsearch-test-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
# Tokenizers a task trains for itself (word_problems) go to a directory of
# this run, not the user's ~/.cache/tsearch.
if "TSEARCH_CACHE" not in os.environ:
  _tsearch_cache = tempfile.mkdtemp(prefix="tsearch-test-cache-")
  os.environ["TSEARCH_CACHE"] = _tsearch_cache
  atexit.register(shutil.rmtree, _tsearch_cache, ignore_errors=True)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)

import gc  # noqa: E402

import pytest  # noqa: E402

# Every executable XLA's CPU backend compiles maps its code into the process
# (several memory mappings each), and they stay mapped while jax's caches
# hold them. An xdist worker that runs half the suite reaches tens of
# thousands of mappings; at the kernel's vm.max_map_count (65530 by
# default) the next compile's mmap fails and the worker dies inside
# backend_compile_and_load (SIGSEGV or abort: the crashes seen in full
# runs). Dropping jax's caches after a module once the count is high
# releases them; programs are rarely shared between modules. 40000 leaves
# room for the largest module (a few thousand mappings).
_MAX_MAPS = 40_000


def _num_maps() -> int:
  try:
    with open("/proc/self/maps", "rb") as f:
      return sum(1 for _ in f)
  except OSError:  # not Linux: no such limit to stay under
    return 0


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  yield
  if _num_maps() > _MAX_MAPS:
    jax.clear_caches()
    gc.collect()


def pytest_collection_modifyitems(config, items):
  """The longest tests first: those marked ``slow`` (a minute or more of a
  2-core CI run) and the notebooks start before the rest, in their
  collection order. xdist hands tests out in this order, so the run ends on
  short tests instead of one worker finishing a long one while the other
  idles."""
  del config

  def heavy(item):
    return (item.get_closest_marker("slow") is not None
            or item.path.suffix == ".ipynb")
  items.sort(key=lambda item: not heavy(item))
