"""Models built for one browser session (the Methods lab's runs), kept within one server-wide memory budget.

Each Methods-lab run builds a full quantized copy of the model for one session. Kept in `st.session_state`,
they grew the server by GBs in one walk through the lab, and nothing bounded the sum over sessions. Here
they live in one process-wide `BudgetedStore`, keyed by (session id, run label) with their byte size; the
session keeps the key and the run's scores. When a new model does not fit, the least recently used models
of any session are freed (those of sessions that have ended or disconnected first); `get` then answers None
and the page that wanted the model says so, keeping the run's results.

Budget: `QE_SESSION_MODEL_BUDGET_MB` (MiB) when set, else min(4 GiB, 25% of total RAM) (RAM from psutil when
installed, else os.sysconf). Bytes are counted wherever the tensors live (CPU or GPU memory).

A model larger than the whole budget is not kept (`put` answers False) and nothing else is freed for it:
freeing the others would not make it fit, and keeping it anyway would break the bound the budget
promises. Its run was already quantized and scored, so only the actions that need the model (export,
Compare, Speed) are lost, and they say why.

How this relates to ui/cache/variants.py: its MAX_VARIANTS quantized copies are shared by every session (a
recipe's round-to-nearest copy is the same for everyone), bounded by count; the models here belong to one
session's run (its own calibration and settings), bounded by bytes. The two bounds add up: at worst
MAX_VARIANTS copies plus this budget.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import streamlit as st

BUDGET_ENV = "QE_SESSION_MODEL_BUDGET_MB"
DEFAULT_CAP = 4 * 2**30  # the default budget is the smaller of this and RAM_SHARE of the RAM
RAM_SHARE = 0.25
SESSION_KEY = "qe_session_id"  # fallback session id, when Streamlit gives none

_LOG = logging.getLogger(__name__)


def total_ram() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None


def budget_bytes() -> int:
    """`QE_SESSION_MODEL_BUDGET_MB` in bytes when set (0 keeps no model), else min(4 GiB, 25% of RAM)."""
    value = os.environ.get(BUDGET_ENV, "").strip()
    if value:
        try:
            megabytes = float(value)
            if megabytes >= 0:
                return int(megabytes * 2**20)
        except ValueError:
            pass
        _LOG.warning("%s=%r is not a number of MiB >= 0; using the default budget", BUDGET_ENV, value)
    ram = total_ram()
    return DEFAULT_CAP if ram is None else min(DEFAULT_CAP, int(RAM_SHARE * ram))


def model_nbytes(model) -> int:
    """Bytes of a model's parameters and buffers, each storage counted once (tied or shared tensors)."""
    seen, total = set(), 0
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        try:
            storage = tensor.untyped_storage()
            key, size = (str(storage.device), storage.data_ptr()), storage.nbytes()
        except (RuntimeError, NotImplementedError, TypeError):  # a tensor subclass without one storage
            key, size = id(tensor), tensor.nbytes
        if key not in seen:
            seen.add(key)
            total += size
    return total


def format_bytes(count: int) -> str:
    """e.g. "4 GiB", "810.5 MiB", "355.3 KiB"."""
    unit, size = next(((u, s) for u, s in (("GiB", 2**30), ("MiB", 2**20)) if count >= s), ("KiB", 2**10))
    return f"{count / size:,.1f}".removesuffix(".0") + f" {unit}"


@dataclass
class _Entry:
    value: object
    nbytes: int


class BudgetedStore:
    """Objects of every session, at most `budget` bytes in all, the least recently used freed first.

    Keys are (session, name). `put` stores and frees others until the total fits; `get` marks an entry used
    and answers None once it was freed; `evicted(session)` names the session's entries freed for room (not
    those it dropped itself). `is_alive(session)` (default: always) tells which sessions still exist: the
    entries of those that do not are freed before any live session's. Thread-safe (one lock).
    """

    def __init__(self, budget: int, is_alive: Callable[[Hashable], bool] | None = None) -> None:
        self.budget = budget
        self._is_alive = is_alive or (lambda session: True)
        self._items: OrderedDict[tuple, _Entry] = OrderedDict()  # least recently used first
        self._evicted: dict[Hashable, dict[Hashable, None]] = {}  # session -> names freed, in order
        self._lock = threading.Lock()

    def put(self, session: Hashable, name: Hashable, value: object, nbytes: int) -> bool:
        """Keep `value` (replacing what the key held), freeing least recently used entries of any session
        until the total fits. False, freeing nothing else, when it alone is over the budget."""
        key = (session, name)
        with self._lock:
            self._items.pop(key, None)
            self._evicted.get(session, {}).pop(name, None)
            for gone in [s for s in self._evicted if not self._is_alive(s)]:  # nobody left to tell
                del self._evicted[gone]
            if nbytes > self.budget:
                return False
            while self._items and self._total() + nbytes > self.budget:
                self._evict(self._victim())
            self._items[key] = _Entry(value, nbytes)
            return True

    def get(self, session: Hashable, name: Hashable) -> object | None:
        """The value (now the most recently used), or None when it was freed or never kept."""
        with self._lock:
            entry = self._items.get((session, name))
            if entry is None:
                return None
            self._items.move_to_end((session, name))
            return entry.value

    def holds(self, session: Hashable, name: Hashable) -> bool:
        """Whether the key is kept, without marking it used."""
        with self._lock:
            return (session, name) in self._items

    def evicted(self, session: Hashable) -> list:
        """The session's names freed to make room (oldest first), not put again since."""
        with self._lock:
            return list(self._evicted.get(session, ()))

    def drop(self, session: Hashable, name: Hashable | None = None) -> None:
        """Forget the key (or all the session's keys, with no name): not an eviction, nothing is reported."""
        with self._lock:
            for key in [k for k in self._items if k[0] == session and name in (None, k[1])]:
                del self._items[key]
            if name is None:
                self._evicted.pop(session, None)
            else:
                self._evicted.get(session, {}).pop(name, None)

    @property
    def total(self) -> int:
        with self._lock:
            return self._total()

    def lru_keys(self) -> list[tuple]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._items)

    def _total(self) -> int:
        return sum(entry.nbytes for entry in self._items.values())

    def _victim(self) -> tuple:
        alive: dict[Hashable, bool] = {}
        for key in self._items:
            if not alive.setdefault(key[0], self._is_alive(key[0])):
                return key
        return next(iter(self._items))

    def _evict(self, key: tuple) -> None:
        session, name = key
        del self._items[key]
        if self._is_alive(session):
            self._evicted.setdefault(session, {})[name] = None
        else:
            self._evicted.pop(session, None)


def _session_alive(session: Hashable) -> bool:
    """False for a Streamlit session that has ended or disconnected; True when there is no server (tests)."""
    try:
        from streamlit.runtime import Runtime

        return not Runtime.exists() or Runtime.instance().is_active_session(str(session))
    except Exception:  # an internal API that moved: treat every session as alive (plain LRU)
        return True


_STORE: BudgetedStore | None = None
_STORE_LOCK = threading.Lock()


def store() -> BudgetedStore:
    """The process-wide store, with the budget read once, when first used."""
    global _STORE
    with _STORE_LOCK:
        if _STORE is None:
            _STORE = BudgetedStore(budget_bytes(), _session_alive)
        return _STORE


def session_id() -> str:
    """This browser session's id: Streamlit's, or one made up and kept in its session state."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    if ctx is not None and getattr(ctx, "session_id", None):
        return ctx.session_id
    return st.session_state.setdefault(SESSION_KEY, uuid.uuid4().hex)


def freed_note() -> str:
    """What a page says where it needs a model that was freed for room."""
    return (
        "This run's quantized model was freed to make room for newer models (the server keeps "
        f"{format_bytes(store().budget)} of them, all sessions together); its results are kept. Run it "
        "again to use it here."
    )


def too_large_note(nbytes: int) -> str:
    """What a page says where it needs a model that was over the whole budget, so never kept."""
    return (
        f"This run's quantized model ({format_bytes(nbytes)}) is larger than the server's memory budget for "
        f"kept models ({format_bytes(store().budget)}), so it was not kept; its results are shown. The "
        f"server's admin can raise it ({BUDGET_ENV})."
    )
