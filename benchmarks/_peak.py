"""Peak resident memory of the current process, for the benchmarks' child processes (Linux, else getrusage)."""
from __future__ import annotations

import resource
from pathlib import Path


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_kib() -> int:
    """Peak RSS of this process in KiB: ``VmHWM``, i.e. getrusage's ``ru_maxrss`` for a fresh process (``ru_maxrss``
    itself is inherited across fork + exec on Linux, so a child of a large parent would report the parent's)."""
    hwm = _status_kib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak() -> int:
    """Reset the peak to the current RSS where Linux allows it (``clear_refs`` 5); return the new baseline."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS") or peak_kib()
    except OSError:
        return peak_kib()
