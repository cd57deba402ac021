"""Process-wide settings of JAX and XLA for the E-step, made in one place before JAX starts.

:func:`configure_jax` runs when the first E-step is built. XLA reads its flags when JAX's
backend starts, so nothing in the package may start it before that (``import blackjax``
does: :mod:`~gmenn_formula.estep.sampler` imports it where it traces). It sets:

- ``XLA_PYTHON_CLIENT_PREALLOCATE=false``: JAX would take 75% of a GPU's memory when
  its backend starts, and torch trains the network on the same GPU;
- XLA's flags: the user's, less the ``--xla_force_host_platform_device_count=100`` that
  importing ``pymc.sampling.jax`` adds (it serves PyMC's own multi-chain sampler, which
  the E-step does not use), plus ``--xla_cpu_enable_concurrency_optimized_scheduler=false``
  (an early suspect of the E-step deadlock, see docs/engine.md, "XLA on the CPU") and an
  empty ``--xla_cpu_experimental_ynn_fusion_type=``: jaxlib 0.10 hands fusions to the
  YNNPACK library, whose code for the E-step's reductions over a few classes ran 3-5x
  slower than XLA's own loops (a NUTS leapfrog step of the base scenario at 20,000 rows:
  3.4 ms with it, 0.9 ms without);
- ``jax_enable_x64`` off: importing PyTensor's JAX backend switches it on when PyTensor's
  floatX is float64, and the E-step runs in float32;
- JAX's persistent compilation cache in :func:`compilation_cache_dir` (unless one is
  configured), for every compilation and without a size limit (JAX's LRU eviction needs a
  time-stamp file beside every entry: in a cache written without them each write failed with
  a warning): a process that fits a model of shapes seen before loads the compiled sampler and
  the small functions around it instead of compiling them again;
- PyTensor's "Explicitly requested dtype" warnings off: its graphs cast to float64/int64
  in places, which JAX truncates to float32/int32 as intended;
- :data:`SETUP_CLOCK` listening to JAX's tracing and compilation events.

A value the user set (an environment variable, a flag in ``XLA_FLAGS``) wins.
"""

from __future__ import annotations

import os
import re
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

USER_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
"""XLA_FLAGS as the process had them before the E-step's imports (PyMC's among them) changed them."""
XLA_CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
XLA_DEFAULT_FLAGS = (
    XLA_CPU_SCHEDULER_FLAG,
    "--xla_cpu_experimental_ynn_fusion_type=",
)
"""Flags the E-step runs with unless the user chose a value (see the module docstring)."""
_DEVICE_COUNT = re.compile(r"--xla_force_host_platform_device_count=\S+")


CACHE_MIN_COMPILE_SECONDS = 0.0
"""Compilations at least this long go to the persistent cache: every one (JAX's default, 1 s,
skips most samplers; at 0.2 s the E-step's small functions and eager operations compiled anew in
every process: a cold cbpp fit 4.7-5.5 s, its epochs 1.5-1.7 s; caching all of them, 3.6-3.8 s
and 0.8 s, the cache ~30 MB after the test suite's structures)."""


def compilation_cache_dir() -> str:
    """Where compiled E-steps persist between processes: ``$JAX_COMPILATION_CACHE_DIR`` if set,
    else ``gmenn_formula/jax`` under ``$XDG_CACHE_HOME`` (default ``~/.cache``)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "gmenn_formula", "jax")


def xla_flags(user_flags: str, current_flags: str) -> str:
    """The XLA flags to run with: ``current_flags`` with only the device count the user set (if any),
    plus each of :data:`XLA_DEFAULT_FLAGS` whose name the user did not set."""
    flags = [_DEVICE_COUNT.sub("", current_flags), *_DEVICE_COUNT.findall(user_flags)]
    flags += [flag for flag in XLA_DEFAULT_FLAGS if flag.split("=")[0] not in current_flags]
    return " ".join(" ".join(flags).split())


def default_device():
    """The jax.Device JAX puts new arrays on: ``jax_default_device`` where set, else this process's
    first (in a multi-process run ``jax.devices()[0]`` belongs to process 0)."""
    import jax

    chosen = jax.config.jax_default_device
    if chosen is None:
        return jax.local_devices()[0]
    return jax.local_devices(backend=chosen)[0] if isinstance(chosen, str) else chosen


SETUP_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
"""JAX's duration events of making compiled code: tracing to a jaxpr, lowering to StableHLO, and
XLA's compilation or its load from the persistent cache."""
SETUP_INTERVALS = 4096
"""Intervals the clock keeps (the most recent): a fit makes tens to hundreds."""


class SetupClock:
    """When this process made the E-step's compiled code (wall-clock intervals of
    ``time.perf_counter``): JAX's :data:`SETUP_EVENTS`, and building or loading the model's
    functions (:meth:`timing`). Thread-safe; overlapping intervals (two chains' threads
    compiling at once, JAX's events inside a build) count once in :meth:`seconds`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._intervals: deque[tuple[float, float]] = deque(maxlen=SETUP_INTERVALS)
        self.listening = False

    def add(self, start: float, end: float) -> None:
        with self._lock:
            self._intervals.append((start, end))

    def on_event(self, event: str, duration: float, **_) -> None:
        """A ``jax.monitoring`` duration listener: takes the :data:`SETUP_EVENTS`, just ended."""
        if event in SETUP_EVENTS:
            end = time.perf_counter()
            self.add(end - duration, end)

    @contextmanager
    def timing(self) -> Iterator[None]:
        """Count the wall time of the ``with`` body as setup."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(start, time.perf_counter())

    def seconds(self, start: float, end: float) -> float:
        """Seconds of [``start``, ``end``] (``perf_counter`` times) covered by setup intervals."""
        with self._lock:
            clipped = sorted((max(a, start), min(b, end)) for a, b in self._intervals if b > start and a < end)
        covered, reached = 0.0, start
        for a, b in clipped:
            covered += max(0.0, b - max(a, reached))
            reached = max(reached, b)
        return covered


SETUP_CLOCK = SetupClock()
"""The process's :class:`SetupClock`; it hears JAX's events once :func:`configure_jax` has run."""


def configure_jax() -> None:
    """Apply the settings above (idempotent; effective while JAX's backend has not started)."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ["XLA_FLAGS"] = xla_flags(USER_XLA_FLAGS, os.environ.get("XLA_FLAGS", ""))
    import jax

    jax.config.update("jax_enable_x64", False)
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", compilation_cache_dir())
        jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)
    warnings.filterwarnings("ignore", message="Explicitly requested dtype (float64|int64)", category=UserWarning)
    if not SETUP_CLOCK.listening:
        jax.monitoring.register_event_duration_secs_listener(SETUP_CLOCK.on_event)
        SETUP_CLOCK.listening = True
