"""Peak resident memory of this process, for the benchmarks' child processes."""
from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_bytes() -> int:
    """This process's peak RSS: VmHWM, which belongs to the address space and so starts
    afresh at exec. getrusage's ru_maxrss does not: a child started by a parent that had
    600 MiB resident reports at least 600 MiB, whatever it uses itself."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""  # no /proc: ru_maxrss (KiB on Linux) is the best there is
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
