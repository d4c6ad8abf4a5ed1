"""The reference software switch: batch parser, classifier, megaflow cache, ports."""

from sbnet.datapath.kernel_cache import drop_stale as _drop_stale

# Before any kernel of the package is loaded from numba's on-disk cache: a cached kernel
# built from other files than its own that have changed since is not numba's to notice.
_drop_stale()
