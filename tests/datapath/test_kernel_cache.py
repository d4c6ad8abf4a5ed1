"""Numba's cached kernels are dropped when any source they build from changes, kept otherwise."""

from sbnet.datapath.kernel_cache import STAMP, drop_stale


def _tree(tmp_path):
    pkg, other = tmp_path / "datapath", tmp_path / "flows"
    for d in (pkg / "__pycache__", other / "__pycache__"):
        d.mkdir(parents=True)
    (pkg / "lane.py").write_text("X = 1\n")
    (other / "fields.py").write_text("SLOT = 3\n")
    return pkg, other


def _cached(pkg, other):
    files = [pkg / "__pycache__" / "lane.k-10.py311.nbi", pkg / "__pycache__" / "lane.k-10.py311.1.nbc",
             other / "__pycache__" / "fields.f-2.py311.nbi"]
    for f in files:
        f.write_bytes(b"cache")
    (pkg / "__pycache__" / "lane.cpython-311.pyc").write_bytes(b"pyc")
    return files


def test_a_change_in_another_file_drops_every_cached_kernel(tmp_path):
    pkg, other = _tree(tmp_path)
    roots = (str(pkg), str(other))
    files = _cached(pkg, other)
    # No digest yet (a cache of unknown sources): dropped, and the digest recorded.
    assert drop_stale(roots)
    assert not any(f.exists() for f in files)
    assert (pkg / "__pycache__" / STAMP).exists()
    assert (pkg / "__pycache__" / "lane.cpython-311.pyc").exists()     # not numba's
    # Same sources: what numba caches from now on is kept.
    files = _cached(pkg, other)
    assert not drop_stale(roots)
    assert all(f.exists() for f in files)
    # The constant a kernel of the other file reads changes: every kernel goes.
    (other / "fields.py").write_text("SLOT = 4\n")
    assert drop_stale(roots)
    assert not any(f.exists() for f in files)
    assert not drop_stale(roots)

