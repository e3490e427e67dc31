"""Process helpers with no heavy imports (the service's CLI uses them before torch is loaded)."""

from __future__ import annotations

import signal


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Linux: have the kernel send `sig` to this process when its parent dies (prctl PR_SET_PDEATHSIG), so
    helper processes never outlive the one that started them. A no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)
    except (OSError, AttributeError):
        pass


__all__ = ["die_with_parent"]
