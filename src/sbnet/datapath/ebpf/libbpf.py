"""The few libbpf calls the kernel tier needs, through ctypes over Debian's libbpf.so.1."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import select
from dataclasses import dataclass

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
BPF_TC_INGRESS = 1
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 0, 1, 2, 3, 4


class BpfError(OSError):
    """A BPF operation the kernel or libbpf refused, with the reason in one line."""


def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise BpfError(errno.ENOENT, f"libbpf is not installed ({exc}): apt-get install libbpf1") from None
    vp, c_int, c_uint = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint
    sigs = {
        "bpf_object__open_file": (vp, [ctypes.c_char_p, vp]),
        "bpf_object__load": (c_int, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_map_by_name": (vp, [vp, ctypes.c_char_p]),
        "bpf_object__find_program_by_name": (vp, [vp, ctypes.c_char_p]),
        "bpf_map__fd": (c_int, [vp]),
        "bpf_map__set_max_entries": (c_int, [vp, c_uint]),
        "bpf_map__reuse_fd": (c_int, [vp, c_int]),
        "bpf_map__key_size": (c_uint, [vp]),
        "bpf_map__value_size": (c_uint, [vp]),
        "bpf_program__fd": (c_int, [vp]),
        "bpf_program__set_autoload": (c_int, [vp, ctypes.c_bool]),
        "bpf_program__set_log_buf": (c_int, [vp, ctypes.c_char_p, ctypes.c_size_t]),
        "bpf_program__set_log_level": (c_int, [vp, c_uint]),
        "bpf_map_update_elem": (c_int, [c_int, vp, vp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (c_int, [c_int, vp, vp]),
        "bpf_map_delete_elem": (c_int, [c_int, vp]),
        "bpf_map_get_next_key": (c_int, [c_int, vp, vp]),
        "bpf_map_update_batch": (c_int, [c_int, vp, vp, ctypes.POINTER(ctypes.c_uint32), vp]),
        "bpf_map_lookup_batch": (c_int, [c_int, vp, vp, vp, vp, ctypes.POINTER(ctypes.c_uint32),
                                         vp]),
        "bpf_prog_test_run_opts": (c_int, [c_int, vp]),
        "bpf_obj_pin": (c_int, [c_int, ctypes.c_char_p]),
        "bpf_obj_get": (c_int, [ctypes.c_char_p]),
        "bpf_tc_hook_create": (c_int, [vp]),
        "bpf_tc_hook_destroy": (c_int, [vp]),
        "bpf_tc_attach": (c_int, [vp, vp]),
        "bpf_tc_detach": (c_int, [vp, vp]),
        "bpf_map__max_entries": (c_uint, [vp]),
        "bpf_xdp_attach": (c_int, [c_int, c_int, ctypes.c_uint32, vp]),
        "bpf_xdp_detach": (c_int, [c_int, ctypes.c_uint32, vp]),
    }
    for fn, (res, args) in sigs.items():
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    return lib


_LIB: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        _LIB = _lib()
    return _LIB


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = -rc if rc != -1 else ctypes.get_errno()
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return rc


class _TestRunOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p),
                ("data_out", ctypes.c_void_p), ("data_size_in", ctypes.c_uint32),
                ("data_size_out", ctypes.c_uint32), ("ctx_in", ctypes.c_void_p),
                ("ctx_out", ctypes.c_void_p), ("ctx_size_in", ctypes.c_uint32),
                ("ctx_size_out", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32)]


class _TcHook(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("ifindex", ctypes.c_int),
                ("attach_point", ctypes.c_int), ("parent", ctypes.c_uint32)]


class _TcOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("prog_fd", ctypes.c_int), ("flags", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("handle", ctypes.c_uint32),
                ("priority", ctypes.c_uint32)]


# struct __sk_buff up to cb[] (what BPF_PROG_RUN reads from ctx_in for a TC program).
SKB_CTX_SIZE = 192            # sizeof(struct __sk_buff) on this UAPI
_SKB_CB_OFFSET = 48


@dataclass
class TestRun:
    retval: int
    data: bytes
    duration_ns: int


class Map:
    """A BPF map by fd, with fixed key and value sizes."""

    def __init__(self, fd: int, key_size: int, value_size: int, name: str = "") -> None:
        self.fd, self.key_size, self.value_size, self.name = fd, key_size, value_size, name

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        _check(lib().bpf_map_update_elem(self.fd, key, value, flags), f"update of map {self.name}")

    def lookup(self, key: bytes) -> bytes | None:
        out = ctypes.create_string_buffer(self.value_size)
        rc = lib().bpf_map_lookup_elem(self.fd, key, out)
        if rc < 0:
            err = ctypes.get_errno() if rc == -1 else -rc
            if err == errno.ENOENT:
                return None
            _check(rc, f"lookup in map {self.name}")
        return out.raw

    def delete(self, key: bytes) -> bool:
        rc = lib().bpf_map_delete_elem(self.fd, key)
        if rc < 0:
            err = ctypes.get_errno() if rc == -1 else -rc
            if err == errno.ENOENT:
                return False
            _check(rc, f"delete from map {self.name}")
        return True

    def update_batch(self, keys: bytes, values: bytes, flags: int = BPF_ANY) -> None:
        """Many entries in one system call (BPF_MAP_UPDATE_BATCH): `keys` and `values` are
        the packed keys and values end to end, in the same order."""
        n = len(keys) // self.key_size
        if n * self.key_size != len(keys) or n * self.value_size != len(values):
            raise ValueError(f"map {self.name}: batch of {len(keys)} key and {len(values)} "
                             f"value bytes is not {n} entries")
        if not n:
            return
        if flags != BPF_ANY:
            for i in range(n):
                self.update(keys[i * self.key_size:(i + 1) * self.key_size],
                            values[i * self.value_size:(i + 1) * self.value_size], flags)
            return
        count = ctypes.c_uint32(n)
        _check(lib().bpf_map_update_batch(self.fd, keys, values, ctypes.byref(count), None),
               f"batch update of map {self.name}")

    def items(self, chunk: int = 4096) -> tuple[bytes, bytes]:
        """Every entry (BPF_MAP_LOOKUP_BATCH, `chunk` a call): (keys, values), packed end to
        end in the same order."""
        keys, values = [], []
        kbuf = ctypes.create_string_buffer(self.key_size * chunk)
        vbuf = ctypes.create_string_buffer(self.value_size * chunk)
        token_in = ctypes.create_string_buffer(max(8, self.key_size))
        token_out = ctypes.create_string_buffer(max(8, self.key_size))
        first = True
        while True:
            count = ctypes.c_uint32(chunk)
            rc = lib().bpf_map_lookup_batch(self.fd, None if first else token_in, token_out,
                                            kbuf, vbuf, ctypes.byref(count), None)
            err = 0 if rc >= 0 else (ctypes.get_errno() if rc == -1 else -rc)
            if err not in (0, errno.ENOENT):
                _check(rc, f"batch lookup in map {self.name}")
            keys.append(kbuf.raw[:count.value * self.key_size])
            values.append(vbuf.raw[:count.value * self.value_size])
            if err == errno.ENOENT:
                return b"".join(keys), b"".join(values)
            ctypes.memmove(token_in, token_out, len(token_out))
            first = False

    def keys(self) -> list[bytes]:
        out, prev = [], None
        nxt = ctypes.create_string_buffer(self.key_size)
        while lib().bpf_map_get_next_key(self.fd, prev, nxt) == 0:
            out.append(nxt.raw)
            prev = ctypes.create_string_buffer(nxt.raw, self.key_size)
        return out


PROGRAMS = ("sbnet_ingress", "sbnet_xdp")     # the object's programs: TC ingress, XDP


class Object:
    """A loaded BPF object file: its maps and programs by name."""

    def __init__(self, path: str, max_entries: dict[str, int] | None = None,
                 reuse: dict[str, int] | None = None, skip: tuple[str, ...] = ()) -> None:
        """skip: programs not to load (their maps are made all the same)."""
        L = lib()
        self._obj = L.bpf_object__open_file(path.encode(), None)
        if not self._obj:
            err = ctypes.get_errno()
            raise BpfError(err, f"cannot open BPF object {path}: {os.strerror(err)}")
        self._logs = {}
        try:
            for name, n in (max_entries or {}).items():
                _check(L.bpf_map__set_max_entries(self._map_ptr(name), n), f"capacity of map {name}")
            for name, fd in (reuse or {}).items():
                _check(L.bpf_map__reuse_fd(self._map_ptr(name), fd), f"reuse of pinned map {name}")
            for name in PROGRAMS:
                prog = L.bpf_object__find_program_by_name(self._obj, name.encode())
                if prog and name in skip:
                    L.bpf_program__set_autoload(prog, False)
                elif prog:
                    self._logs[name] = ctypes.create_string_buffer(1 << 20)
                    L.bpf_program__set_log_buf(prog, self._logs[name], 1 << 20)
            rc = L.bpf_object__load(self._obj)
            if rc < 0:
                err = -rc
                log = [ln for b in self._logs.values()
                       for ln in b.value.decode(errors="replace").strip().splitlines()]
                tail = f" (verifier: {log[-2] if len(log) > 1 else log[-1]})" if log else ""
                if err in (errno.EPERM, errno.EACCES) and not log:
                    raise BpfError(err, "loading a BPF program was refused: the kernel tier needs "
                                        "root (CAP_BPF and CAP_NET_ADMIN); use --datapath reference")
                raise BpfError(err, f"loading the BPF program failed: {os.strerror(err)}{tail}")
        except BaseException:
            L.bpf_object__close(self._obj)
            self._obj = None
            raise

    def _map_ptr(self, name: str) -> int:
        m = lib().bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise BpfError(errno.ENOENT, f"the BPF object has no map {name}")
        return m

    def map_sizes(self, name: str) -> tuple[int, int]:
        """(key size, value size) of a map as the object declares it."""
        m = self._map_ptr(name)
        return lib().bpf_map__key_size(m), lib().bpf_map__value_size(m)

    def map_max_entries(self, name: str) -> int:
        return lib().bpf_map__max_entries(self._map_ptr(name))

    def map_fd(self, name: str) -> int:
        return _check(lib().bpf_map__fd(self._map_ptr(name)), f"fd of map {name}")

    def prog_fd(self, name: str) -> int:
        p = lib().bpf_object__find_program_by_name(self._obj, name.encode())
        if not p:
            raise BpfError(errno.ENOENT, f"the BPF object has no program {name}")
        return _check(lib().bpf_program__fd(p), f"fd of program {name}")

    def close(self) -> None:
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = None


def test_run(prog_fd: int, data: bytes, cb: tuple[int, ...] = (), repeat: int = 1,
             out_size: int | None = None, ifindex: int = 0) -> TestRun:
    """BPF_PROG_RUN of a TC program on one frame; cb[] words go into the __sk_buff context,
    ifindex (a real device) as the packet's device and ingress device."""
    ctx = bytearray(SKB_CTX_SIZE)
    ctx[36:40] = ifindex.to_bytes(4, "little")        # ingress_ifindex
    ctx[40:44] = ifindex.to_bytes(4, "little")        # ifindex
    for i, v in enumerate(cb[:5]):
        ctx[_SKB_CB_OFFSET + 4 * i:_SKB_CB_OFFSET + 4 * i + 4] = (v & 0xFFFFFFFF).to_bytes(4, "little")
    din = ctypes.create_string_buffer(bytes(data), len(data))
    size = out_size or len(data) + 256
    dout = ctypes.create_string_buffer(size)
    cin = ctypes.create_string_buffer(bytes(ctx), len(ctx))
    o = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), data_in=ctypes.addressof(din),
                     data_out=ctypes.addressof(dout), data_size_in=len(data), data_size_out=size,
                     ctx_in=ctypes.addressof(cin), ctx_size_in=len(ctx), repeat=repeat)
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(o)), "BPF_PROG_RUN")
    return TestRun(o.retval, dout.raw[:o.data_size_out], o.duration)


def pin(fd: int, path: str) -> None:
    _check(lib().bpf_obj_pin(fd, path.encode()), f"pinning {path}")


def pinned(path: str) -> int | None:
    """fd of a pinned object, None when nothing is pinned there."""
    rc = lib().bpf_obj_get(path.encode())
    if rc < 0:
        err = ctypes.get_errno() if rc == -1 else -rc
        if err == errno.ENOENT:
            return None
        _check(rc, f"opening pinned {path}")
    return rc


def tc_attach_ingress(ifindex: int, prog_fd: int) -> None:
    """clsact on the device (created if missing) and the program at ingress, direct action."""
    hook = _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=BPF_TC_INGRESS)
    rc = lib().bpf_tc_hook_create(ctypes.byref(hook))
    if rc < 0 and -rc != errno.EEXIST:
        _check(rc, f"clsact on ifindex {ifindex}")
    opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), prog_fd=prog_fd, handle=1, priority=1,
                   flags=1)       # BPF_TC_F_REPLACE
    _check(lib().bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)),
           f"attaching at ingress of ifindex {ifindex}")


def tc_detach_ingress(ifindex: int) -> None:
    hook = _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=BPF_TC_INGRESS)
    opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=1, priority=1)
    lib().bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))


XDP_MODES = {"native": 4, "generic": 2}     # XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE


def xdp_attach(ifindex: int, prog_fd: int, mode: str) -> None:
    """The XDP program on the device, in `mode` (native: the driver's; generic: on the skb)."""
    if mode not in XDP_MODES:
        raise ValueError(f"XDP mode must be one of {sorted(XDP_MODES)}")
    _check(lib().bpf_xdp_attach(ifindex, prog_fd, XDP_MODES[mode], None),
           f"attaching XDP ({mode}) to ifindex {ifindex}")


def xdp_detach(ifindex: int, mode: str) -> None:
    lib().bpf_xdp_detach(ifindex, XDP_MODES.get(mode, 0), None)


def xdp_test_run(prog_fd: int, data: bytes, repeat: int = 1) -> TestRun:
    """BPF_PROG_RUN of an XDP program on one frame (no context: no ingress device)."""
    din = ctypes.create_string_buffer(bytes(data), len(data))
    size = len(data) + 256
    dout = ctypes.create_string_buffer(size)
    o = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), data_in=ctypes.addressof(din),
                     data_out=ctypes.addressof(dout), data_size_in=len(data), data_size_out=size,
                     repeat=repeat)
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(o)), "BPF_PROG_RUN (XDP)")
    return TestRun(o.retval, dout.raw[:o.data_size_out], o.duration)


_RINGBUF_BUSY, _RINGBUF_DISCARD, _RINGBUF_HDR = 1 << 31, 1 << 30, 8


class RingReader:
    """Records of a BPF ring buffer map, read from its shared memory as libbpf does, but
    without a call per record: one wake-up (poll on the map's fd) drains every record
    committed so far into a list."""

    def __init__(self, map_fd: int, size: int) -> None:
        page = mmap.PAGESIZE
        self.fd, self.mask = map_fd, size - 1
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # The producer's page, then the data pages mapped twice: a record that wraps around
        # the end reads as one run of bytes.
        self._prod = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                               offset=page)
        self._page = page
        self._poll = select.poll()
        self._poll.register(map_fd, select.POLLIN)

    def watch(self, fd: int) -> None:
        """Wake wait() for input on `fd` too (the slow path's own sockets)."""
        self._poll.register(fd, select.POLLIN)

    def wait(self, timeout_ms: int) -> bool:
        """Block until a record is there, or input on a watched fd (or timeout_ms passes)."""
        return bool(self._poll.poll(timeout_ms))

    def drain(self, limit: int = 1 << 16) -> list[bytes]:
        """Every committed record not yet read (at most `limit`), oldest first."""
        cons = int.from_bytes(self._cons[0:8], "little")
        prod = int.from_bytes(self._prod[0:8], "little")
        out, data, base, mask = [], self._prod, self._page, self.mask
        while cons < prod and len(out) < limit:
            at = base + (cons & mask)
            hdr = int.from_bytes(data[at:at + 4], "little")
            if hdr & _RINGBUF_BUSY:
                break                      # still being written: the next drain takes it
            n = hdr & ~(_RINGBUF_BUSY | _RINGBUF_DISCARD)
            if not hdr & _RINGBUF_DISCARD:
                out.append(data[at + _RINGBUF_HDR:at + _RINGBUF_HDR + n])
            cons += (n + _RINGBUF_HDR + 7) & ~7
        self._cons[0:8] = cons.to_bytes(8, "little")
        return out

    def close(self) -> None:
        if self._cons is not None:
            self._cons.close()
            self._prod.close()
            self._cons = self._prod = None
