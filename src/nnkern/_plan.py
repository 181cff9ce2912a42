"""The fused training step's plan for the machine it runs on: how many threads it uses.

A step's best thread count depends on the CPU (its cores, caches and how a second thread
shares them), the network, the batch and the dtype: one constant (``SPLIT_MIN_MACS``)
cannot hold on every machine. So the fused step (:mod:`nnkern.engine`) can plan itself, as
FFTW plans its transforms (``nnkern tune``, or ``NNKERN_PLAN=auto``; by default a fit uses
a stored plan and times nothing, see the setting below): it times the candidate counts, one
after the other on real training steps (they train the model as any other step, so nothing
is wasted), keeps the fastest and remembers it in a small JSON file, the plan cache.

**Candidates.** 1 thread, the step's share of the budget (``budget // active callers``,
:func:`nnkern._threads.claim`) and, from a share of 4, half of it. Each runs
:data:`WARMUP_STEPS` untimed steps (a first call compiles, the first region with more
threads starts them) and then :data:`TIMED_STEPS` timed ones; its time is their median.
A step's first call is never timed (it may compile, its buffers are new): with three
candidates the plan is made after 16 steps, 1.7% of a default ``nnkern train`` epoch (938
steps). The plan is the fewest threads within :data:`TIE_MARGIN` of the fastest: a plan
never uses more threads when fewer are about as fast.

**The cache** (:func:`cache_path`): ``$NNKERN_PLAN_CACHE``, else
``$XDG_CACHE_HOME/nnkern/plans.json``, else ``~/.cache/nnkern/plans.json``. A plan is kept
per CPU model (from ``/proc/cpuinfo``), backend, network (layer widths and activations, and
the loss head where it is not softmax cross entropy),
batch rows, dtype, first layer (sparse or dense input) and thread share. Writes replace the
file atomically under a lock, so processes planning at once keep each other's plans; a file
that cannot be read or parsed is ignored with one :class:`PlanCacheWarning` and rewritten
at the next plan. ``nnkern tune`` makes plans ahead of time, ``nnkern info`` shows the
cache, ``fit(verbose=True)`` the plan in use.

**The setting** ``NNKERN_PLAN`` (read when a fused step is built):

- ``cached`` (the default): a plan made before (``nnkern tune``, or a fit under ``auto``)
  where the cache has one for this step, else the ``off`` rule; nothing is timed during
  your fits. Four steps per candidate at a fit's start proved too few to trust for good:
  on a quiet 2-core Zen 3 a fit's trial planned 1 thread for 784-256-128-64-20-10 at batch
  200 (2.65 against 2.86 ms per step) where 2 threads train its epochs 1.35-1.4x faster;
- ``auto``: plan as above (time the candidates where no plan is cached);
- ``off``: no timing; the step uses its share, or one thread when its largest product is
  below ``SPLIT_MIN_MACS`` (deterministic: what the test suite runs with);
- a positive integer: that many threads, lowered to the share.

Whatever the plan, a step never uses more threads than its share at that call: a plan is
made for one share, and a call whose share differs uses (or makes) the plan for its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field

from . import _threads

__all__ = ["ThreadPlanner", "Plan", "PlanKey", "PlanCacheWarning", "plan_setting", "cache_path",
           "read_cache", "cpu_model", "candidate_threads"]

PLAN_ENV = "NNKERN_PLAN"
PLAN_CACHE_ENV = "NNKERN_PLAN_CACHE"
# Untimed steps before each candidate's timed ones.
WARMUP_STEPS = 1
# Timed steps per candidate (their median is its time).
TIMED_STEPS = 4
# More threads must be this much faster than fewer to be planned.
TIE_MARGIN = 0.05
# The cache file's layout; a file of another format is read as empty and replaced.
CACHE_FORMAT = 1

try:
    import fcntl
except ImportError:  # not on POSIX: atomic replacement alone (a concurrent plan may be lost, never the file)
    fcntl = None


class PlanCacheWarning(UserWarning):
    """The plan cache could not be read or written; plans are made (or kept) in memory."""


def plan_setting() -> str | int:
    """``NNKERN_PLAN``: "cached" (also when unset), "auto", "off" or a positive thread count."""
    raw = os.environ.get(PLAN_ENV, "").strip().lower()
    if raw in ("", "cached"):
        return "cached"
    if raw in ("auto", "off"):
        return raw
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"{PLAN_ENV} must be 'cached', 'auto', 'off' or a positive number of threads, "
                         f"got {os.environ[PLAN_ENV]!r}")
    return threads


_cpu_model: str | None = None  # read once per process


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (its first "model name", or "Model" on
    ARM), else what the platform module knows."""
    global _cpu_model
    if _cpu_model is None:
        _cpu_model = platform.processor() or platform.machine() or "unknown CPU"
        with contextlib.suppress(OSError):
            with open("/proc/cpuinfo") as cpuinfo:
                for line in cpuinfo:
                    key, _, value = line.partition(":")
                    if key.strip() in ("model name", "Model") and value.strip():
                        _cpu_model = value.strip()
                        break
    return _cpu_model


def cache_path() -> str:
    """Where plans are kept (see the module's docstring)."""
    explicit = os.environ.get(PLAN_CACHE_ENV)
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "nnkern", "plans.json")


def candidate_threads(share: int) -> list[int]:
    """The thread counts timed for a step whose share of the budget is ``share``."""
    candidates = {1, share}
    if share >= 4:
        candidates.add(share // 2)
    return sorted(candidates)


@dataclass(frozen=True)
class PlanKey:
    """What a plan is made for. ``network``: the layer widths with each activation, and the
    loss head unless it is softmax cross entropy, e.g. "784-256relu-10", "13-100relu-1
    identity_squared"."""

    cpu: str
    backend: str
    network: str
    rows: int
    dtype: str
    sparse_input: bool
    share: int

    def text(self) -> str:
        """The key of the cache file's entry."""
        return (f"{self.cpu} | {self.backend} | {self.network} | batch {self.rows} | {self.dtype} | "
                f"{'sparse' if self.sparse_input else 'dense'} input | share {self.share}")


@dataclass(frozen=True)
class Plan:
    """A step's thread count; ``timings``: seconds per step of each candidate timed;
    ``source``: "timed" (in this process), "cache" (read from ``where``), "share" (a
    share of one thread leaves nothing to time) or "rule" (none cached, not timed); ``saved``: whether a timed plan reached
    the cache (else ``problem`` says why not)."""

    threads: int
    timings: dict = field(default_factory=dict)
    source: str = "timed"
    where: str = ""
    saved: bool = False
    problem: str = ""

    def describe(self) -> str:
        """One line for ``fit(verbose=True)`` and ``nnkern tune``."""
        count = _threads_word(self.threads)
        timed = ", ".join(f"{_threads_word(n)} {seconds * 1e6:.0f} us/step"
                          for n, seconds in sorted(self.timings.items()))
        if self.source == "share":
            return f"plan: {count} (the step's share of the thread budget is 1)"
        if self.source == "rule":
            return (f"plan: {count} (none cached for this step: one thread below SPLIT_MIN_MACS multiply-adds, "
                    f"else the share; `nnkern tune` or {PLAN_ENV}=auto times it)")
        if self.source == "cache":
            return f"plan: {count}, from the cache {self.where} (timed: {timed})"
        kept = f"cached in {self.where}" if self.saved else f"not cached: {self.problem}"
        return f"plan: {count} (timed: {timed}; {kept})"

    def entry(self) -> dict:
        """The cache file's record of this plan."""
        return {"threads": self.threads,
                "us_per_step": {str(n): round(seconds * 1e6, 1) for n, seconds in sorted(self.timings.items())},
                "timed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _threads_word(n: int) -> str:
    return f"{n} thread" if n == 1 else f"{n} threads"


# ---------------------------------------------------------------------------------------
# The cache file
# ---------------------------------------------------------------------------------------

_warned: set = set()  # (path, what) already warned about, once per process


def _warn_once(path: str, what: str, message: str) -> None:
    if (path, what) not in _warned:
        _warned.add((path, what))
        warnings.warn(message, PlanCacheWarning, stacklevel=4)


def _parse(text: str) -> dict:
    """The plans of a cache file's text; ValueError when it is not one."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("plans"), dict):
        raise ValueError(f"not a plan cache of format {CACHE_FORMAT}")
    return data["plans"]


def read_cache(path: str | None = None) -> dict:
    """{key text: entry} of the cache file (empty when there is none yet); a file that
    cannot be read or parsed counts as empty, with one :class:`PlanCacheWarning`."""
    path = path or cache_path()
    try:
        with open(path, encoding="utf-8") as f:
            return _parse(f.read())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        _warn_once(path, "read", f"nnkern: ignoring the plan cache {path}, which cannot be read "
                   f"({type(exc).__name__}: {exc}); steps are planned again and the file is rewritten")
        return {}


def _cached_plan(entry, share: int, path: str) -> Plan | None:
    """A cache entry as a Plan, or None when it is not a valid one for this share."""
    try:
        threads = entry["threads"]
        timings = {int(n): float(us) / 1e6 for n, us in entry.get("us_per_step", {}).items()}
    except (TypeError, KeyError, ValueError, AttributeError):
        return None
    if type(threads) is not int or not 1 <= threads <= share:
        return None
    return Plan(threads, timings, source="cache", where=path)


def write_plan(key: PlanKey, plan: Plan, path: str | None = None) -> str:
    """Add ``plan`` under ``key`` to the cache file, keeping the other plans in it (read
    again under the lock: another process may have added some); the file is replaced
    atomically. Returns "" when saved, else why not (also warned, once per process)."""
    path = path or cache_path()
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        with open(path + ".lock", "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PlanCacheWarning)  # a corrupt file is replaced here
                plans = read_cache(path)
            plans[key.text()] = plan.entry()
            fd, temporary = tempfile.mkstemp(prefix=".plans-", suffix=".json", dir=folder)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"format": CACHE_FORMAT, "plans": plans}, f, indent=1, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
    except OSError as exc:
        problem = f"{type(exc).__name__}: {exc}"
        _warn_once(path, "write", f"nnkern: cannot save the step's plan in {path} ({problem}); "
                   f"it is kept for this process only (set {PLAN_CACHE_ENV} to a writable file)")
        return problem
    return ""


# ---------------------------------------------------------------------------------------
# Timing the candidates
# ---------------------------------------------------------------------------------------


class _Trial:
    """Times the candidates one after the other, each on WARMUP_STEPS + TIMED_STEPS
    consecutive steps (consecutive: a thread count's own steady state, its threads awake)."""

    def __init__(self, candidates: list[int]):
        self.candidates = candidates
        self.samples = {n: [] for n in candidates}
        self.position = 0  # index of the candidate being timed
        self.steps_in_block = 0

    def threads(self) -> int:
        return self.candidates[self.position]

    def record(self, threads: int, seconds: float) -> bool:
        """Count a step of ``threads`` that took ``seconds``; True once every candidate is timed."""
        if threads == self.threads():  # a concurrent caller may have moved the trial on
            self.steps_in_block += 1
            if self.steps_in_block > WARMUP_STEPS:
                self.samples[threads].append(seconds)
            if len(self.samples[threads]) >= TIMED_STEPS:
                self.position += 1
                self.steps_in_block = 0
        return self.position == len(self.candidates)

    def plan(self) -> Plan:
        timings = {n: statistics.median(s) for n, s in self.samples.items()}
        fastest = min(timings.values())
        threads = min(n for n, seconds in timings.items() if seconds <= fastest * (1 + TIE_MARGIN))
        return Plan(threads, timings)


# The plans and trials of this process, by key text: a later step (another fit of the same
# network, a partial_fit) goes on from them instead of timing or reading the file again.
_plans: dict = {}
_trials: dict = {}
_lock = threading.Lock()


def forget_plans() -> None:
    """Forget this process's plans and trials (the cache file stays): the next step looks
    its plan up in the cache again."""
    with _lock:
        _plans.clear()
        _trials.clear()


class ThreadPlanner:
    """The thread count of one fused step's calls: ``run(call)`` claims the step's share
    of the budget (:func:`nnkern._threads.claim`) and calls ``call(threads)`` with the
    threads its plan gives for that share (timing the candidates first where no plan is
    known). ``work``: the step's largest product in multiply-adds (``NNKERN_PLAN=off``
    decides by it). ``clock``: seconds, :func:`time.perf_counter` (tests pass their own).
    ``retime``: time the candidates even where a plan is cached (``nnkern tune``)."""

    def __init__(self, backend: str, network: str, rows: int, dtype: str, sparse_input: bool, work: int, *,
                 clock=time.perf_counter, retime: bool = False):
        self.setting = plan_setting()
        self.backend, self.network, self.rows, self.dtype = backend, network, int(rows), str(dtype)
        self.sparse_input, self.work = bool(sparse_input), int(work)
        self.clock = clock
        self.retime = retime
        self.by_share: dict = {}  # share -> Plan, for this step's calls
        self._keys: dict = {}  # share -> (PlanKey, its text)
        self.last_share: int | None = None
        self._first_call = True  # never timed: this step's buffers are new

    def key(self, share: int) -> tuple[PlanKey, str]:
        """The key of this step's plan for ``share``, and its text."""
        found = self._keys.get(share)
        if found is None:
            key = PlanKey(cpu_model(), self.backend, self.network, self.rows, self.dtype, self.sparse_input, share)
            found = self._keys[share] = (key, key.text())
        return found

    def run(self, call):
        """``call(threads)``'s result, within a claim of the budget."""
        setting = self.setting
        if setting == "off":
            with _threads.claim(self.work) as threads:
                self.last_share = threads
                return call(threads)
        with _threads.claim() as share:
            self.last_share = share
            if setting not in ("auto", "cached"):
                return call(min(setting, share))
            plan = self.by_share.get(share)
            if plan is not None:
                return call(plan.threads)
            if setting == "cached":
                plan = self.by_share[share] = self.stored_plan(share) or self.rule_plan(share)
                return call(plan.threads)
            return self._planning(share, call)

    def rule_plan(self, share: int) -> Plan:
        """The plan without timing: one thread when the largest product is below
        ``SPLIT_MIN_MACS``, else the share (what ``NNKERN_PLAN=off`` runs)."""
        return Plan(1 if self.work < _threads.SPLIT_MIN_MACS else share, source="rule")

    def stored_plan(self, share: int) -> Plan | None:
        """The plan for ``share`` made or read in this process, else the cache's, else None;
        nothing is timed."""
        if share == 1:
            return Plan(1, source="share")
        text = self.key(share)[1]
        with _lock:
            plan = _plans.get(text)
        if plan is not None:
            return plan
        path = cache_path()
        entry = read_cache(path).get(text)
        plan = None if entry is None else _cached_plan(entry, share, path)
        if plan is not None:
            with _lock:
                _plans[text] = plan
        return plan

    def _planning(self, share: int, call):
        """A call of a share without a plan in this step yet: the known plan, or one step of
        the trial."""
        plan = self.known_plan(share)
        if plan is not None:
            self.by_share[share] = plan
            return call(plan.threads)
        key, text = self.key(share)
        with _lock:
            trial = _trials.get(text)
            if trial is None:
                trial = _trials[text] = _Trial(candidate_threads(share))
            threads = trial.threads()
        started = self.clock()
        result = call(threads)
        seconds = self.clock() - started
        if self._first_call:
            self._first_call = False
            return result
        with _lock:
            finished = _trials.get(text) is trial and trial.record(threads, seconds)
            if finished:
                del _trials[text]
        if finished:
            plan = trial.plan()
            path = cache_path()
            problem = write_plan(key, plan, path)
            plan = Plan(plan.threads, plan.timings, where=path, saved=not problem, problem=problem)
            with _lock:
                _plans[text] = plan
            self.by_share[share] = plan
        return result

    def known_plan(self, share: int) -> Plan | None:
        """The plan for ``share`` made or read in this process, else the cache's (read once
        per key and process), else None; a share of 1 needs none."""
        if share == 1:
            return Plan(1, source="share")
        text = self.key(share)[1]
        with _lock:
            if self.retime:  # time it again, whatever is known
                self.retime = False
                _plans.pop(text, None)
                _trials.setdefault(text, _Trial(candidate_threads(share)))
                return None
            plan = _plans.get(text)
            if plan is not None or text in _trials:
                return plan
        path = cache_path()
        entry = read_cache(path).get(text)
        plan = None if entry is None else _cached_plan(entry, share, path)
        with _lock:
            if plan is not None:
                _plans[text] = plan
            elif text not in _trials:
                _trials[text] = _Trial(candidate_threads(share))
        return plan

    def current_plan(self) -> Plan | None:
        """The plan of this step's last call's share, once made (None before the first call
        and while the candidates are being timed)."""
        return None if self.last_share is None else self.by_share.get(self.last_share)

    def describe(self) -> str | None:
        """What ``fit(verbose=True)`` prints about the plan, or None while it is not made yet."""
        if self.setting == "off":
            budget = _threads.get_num_threads()
            threads = 1 if self.work < _threads.SPLIT_MIN_MACS else budget
            return (f"plan: {_threads_word(threads)} ({PLAN_ENV}=off: one thread when the largest product is "
                    f"below SPLIT_MIN_MACS multiply-adds, else the budget share)")
        share = self.last_share if self.last_share is not None else _threads.get_num_threads()
        if self.setting == "cached":
            plan = self.by_share.get(share) or self.stored_plan(share) or self.rule_plan(share)
            return plan.describe()
        if self.setting != "auto":
            return f"plan: {_threads_word(min(self.setting, share))} ({PLAN_ENV}={self.setting}, " \
                   f"at most the budget share {share})"
        plan = self.by_share.get(share)
        if plan is None and self.last_share is None:
            plan = self.known_plan(share)
        return None if plan is None else plan.describe()
