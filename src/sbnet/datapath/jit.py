"""The datapath's compiled kernels: one decorator, and compiling a cold cache on two cores."""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numba
from numba.extending import is_jitted

# Set in the helper process compile_ahead() starts: the directory both processes claim
# kernels in.  There kernel() only records each kernel; run() compiles them.
HELPER_ENV = "SBNET_JIT_HELPER"
_POLL = 0.02


class _Claims:
    """Who compiles which kernel, as files in one directory both processes share: a
    kernel's `.claim` made with O_EXCL (its content the claimer's pid) says who compiles
    it, its `.done` that the claimer is through (numba has written the cache by then, as
    it saves an entry before compile() returns, with an atomic rename)."""

    def __init__(self, where: str, other_alive) -> None:
        self.where, self.other_alive = where, other_alive

    def _path(self, name: str, ext: str) -> str:
        return os.path.join(self.where, name + ext)

    def claim(self, name: str) -> bool:
        try:
            fd = os.open(self._path(name, ".claim"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True

    def done(self, name: str) -> None:
        with open(self._path(name, ".done"), "w"):
            pass

    def claimed(self, name: str) -> bool:
        return os.path.exists(self._path(name, ".claim"))

    def busy(self, name: str) -> bool:
        """Whether the other process has claimed the kernel and is still at it."""
        return (self.claimed(name) and not os.path.exists(self._path(name, ".done"))
                and self.other_alive())

    def wait(self, name: str) -> None:
        while self.busy(name):
            time.sleep(_POLL)


def _name(disp) -> str:
    return f"{disp.py_func.__module__}.{disp.py_func.__qualname__}"


def _compile(disp, sig) -> None:
    # What numba.njit(sig) does at decoration; a kernel is not recursive, so it needs no
    # registration for calls of itself while it compiles.
    disp.compile(sig)
    disp.disable_compile()


class _Main:
    """The process that runs the datapath, its helper started: each kernel, as its module
    is imported, is waited for if the helper is compiling it (then loaded from the cache),
    else claimed and compiled here."""

    def __init__(self) -> None:
        self.where = tempfile.mkdtemp(prefix="sbnet-jit-")
        self.helper = None
        self.claims = _Claims(self.where, lambda: self.helper is not None
                              and self.helper.poll() is None)

    def start(self, module: str) -> None:
        env = dict(os.environ, **{HELPER_ENV: self.where})
        code = f"from {__name__} import _helper_main; _helper_main({module!r})"
        self.helper = subprocess.Popen([sys.executable, "-c", code], env=env,
                                       stdin=subprocess.DEVNULL)
        atexit.register(self.close)

    def close(self) -> None:
        if self.helper is not None and self.helper.poll() is None:
            self.helper.terminate()
            self.helper.wait()
        shutil.rmtree(self.where, ignore_errors=True)

    def compile(self, disp, sig) -> None:
        name = _name(disp)
        self.claims.wait(name)
        mine = self.claims.claim(name)
        try:
            _compile(disp, sig)
        finally:
            if mine:
                self.claims.done(name)


class _Orphaned(Exception):
    """The main process is gone: nobody will load what the helper compiles next."""


class _Helper:
    """The helper process: every kernel of the module main imports, recorded as imported,
    then compiled from the last to the first (main compiles from the first on), each after
    the kernels it calls; a kernel main has claimed is left to it unless one of ours calls
    it, then waited for and loaded from the cache."""

    def __init__(self, where: str) -> None:
        self.parent = os.getppid()
        self.claims = _Claims(where, self._parent_alive)
        self.kernels: list = []          # (dispatcher, signature), in import order
        self.compiled: set = set()

    def _parent_alive(self) -> bool:
        return os.getppid() == self.parent

    def compile(self, disp, sig) -> None:
        self.kernels.append((disp, sig))

    def run(self) -> None:
        sigs = {id(d): s for d, s in self.kernels}
        try:
            for disp, _ in reversed(self.kernels):
                self._ensure(disp, sigs, needed=False)
        except _Orphaned:
            # Main was killed before its exit handler ran: the claims are ours to remove.
            shutil.rmtree(self.claims.where, ignore_errors=True)

    def _ensure(self, disp, sigs, needed: bool) -> None:
        if id(disp) in self.compiled:
            return
        if not self._parent_alive():
            raise _Orphaned
        name = _name(disp)
        if not needed and self.claims.claimed(name):
            return
        # The kernels it calls first: each time one nobody is at, if any is left, else
        # wait for one main is compiling.
        deps = callees(disp.py_func, sigs)
        while deps:
            dep = next((d for d in deps if not self.claims.busy(_name(d))), deps[0])
            deps.remove(dep)
            self._ensure(dep, sigs, needed=True)
        self.claims.wait(name)
        mine = self.claims.claim(name)
        try:
            _compile(disp, sigs[id(disp)])
        finally:
            self.compiled.add(id(disp))
            if mine:
                self.claims.done(name)


def callees(fn, kernels: dict, seen: set | None = None) -> list:
    """The dispatchers in `kernels` (by id) that fn calls, through any jitted function it
    calls (inlined or not), by global name or as an attribute of a module."""
    seen = set() if seen is None else seen
    found: list = []
    codes, names = [fn.__code__], set()
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if hasattr(c, "co_names"))
    objs = [fn.__globals__.get(n) for n in names]
    objs += [getattr(o, n, None) for o in list(objs) if type(o) is type(sys) for n in names]
    for obj in objs:
        if not is_jitted(obj) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if id(obj) in kernels:
            found.append(obj)
        else:
            found.extend(callees(obj.py_func, kernels, seen))
    return found


_coordinator: _Main | _Helper | None = None
_ahead_module: str | None = None
if os.environ.get(HELPER_ENV):
    _coordinator = _Helper(os.environ[HELPER_ENV])


def kernel(sig):
    """numba.njit(sig, cache=True, nogil=True): compiled for exactly `sig` when its module
    is imported (never in the middle of a packet burst; callers pass exactly these types)
    and kept in numba's on-disk cache.  After compile_ahead(), a cold cache is shared out
    between this process and a helper."""
    def decorate(fn):
        global _coordinator
        disp = numba.njit(cache=True, nogil=True)(fn)
        if not is_jitted(disp):         # NUMBA_DISABLE_JIT: the Python function itself
            return disp
        if _coordinator is None and _ahead_module is not None and _cold(disp):
            _coordinator = _Main()
            try:
                _coordinator.start(_ahead_module)
            except OSError:             # no helper: this process compiles them all
                _coordinator.close()
                _coordinator = None
        if _coordinator is None:
            _compile(disp, sig)
        else:
            _coordinator.compile(disp, sig)
        return disp
    return decorate


def entry_point(disp):
    """The native function of a kernel's one signature, to call without the dispatcher's
    argument checks (None in the helper, which only compiles)."""
    if isinstance(_coordinator, _Helper):
        return None
    return disp.overloads[disp.signatures[0]].entry_point


def _cold(disp) -> bool:
    """Whether numba's cache has no entry for the kernel newer than its source (numba
    names a function's index <file>.<qualname>-<line>.py<version>.nbi)."""
    source = disp.py_func.__code__.co_filename
    pattern = os.path.join(disp.stats.cache_path, f"*.{disp.py_func.__qualname__}-*.nbi")
    with contextlib.suppress(OSError):
        newest = max((os.path.getmtime(p) for p in glob.glob(pattern)), default=0.0)
        return newest < os.path.getmtime(source)
    return True


def compile_ahead(module: str) -> None:
    """Before `module` (which imports the datapath) is imported: if the first kernel it
    imports is not in numba's cache, a helper process imports `module` too and compiles
    the kernels from the last backwards while this one compiles them from the first on,
    both into the shared on-disk cache; this one loads those the helper compiled."""
    global _ahead_module
    if _coordinator is None:
        _ahead_module = module


def _helper_main(module: str) -> None:
    import importlib
    importlib.import_module(module)
    if isinstance(_coordinator, _Helper):
        _coordinator.run()
