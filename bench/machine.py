"""The machine as the benchmark sees it: cores, open-files limit, and /proc readings.

Used by every part of `bench/`: the server's CPU time and RSS come from /proc (summed
over its process tree, so nginx's master and worker both count), the Redis connections a
server holds from its sockets, and the description of the machine from lscpu and /proc.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVER_CORE = 0  # the server under test
LOAD_CORE = 1  # the load generator, the publisher, Redis and the harness itself
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (children inherit it)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def usable_core(core: int) -> int:
    """`core`, or core 0 on a one-core machine (then nothing is really separated)."""
    return core % (os.cpu_count() or 1)


def pin_to(core: int) -> None:
    """Pin this process (and so the children it starts from now on) to one core."""
    os.sched_setaffinity(0, {usable_core(core)})


def taskset(core: int) -> list[str]:
    """The command prefix that starts a program pinned to `core` (taskset execs in place,
    so the child's pid is the program's)."""
    return ["taskset", "-c", str(usable_core(core))]


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants that are still alive."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes, in seconds (dead ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLOCK_TICKS


def rss_bytes(pids: list[int]) -> int:
    """Resident set size of these processes (VmRSS), summed."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def socket_inodes(pids: list[int]) -> set[int]:
    inodes = set()
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def connections_to(pids: list[int], port: int) -> int:
    """Established TCP connections these processes hold to `port` on this machine."""
    inodes = socket_inodes(pids)
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            remote_port = int(parts[2].rpartition(":")[2], 16)
            if remote_port == port and parts[3] == "01" and int(parts[9]) in inodes:
                count += 1
    return count


@dataclass(frozen=True, slots=True)
class MachineInfo:
    cpu: str
    cores: int
    memory_gib: float
    kernel: str
    python: str
    open_files: int

    def describe(self) -> str:
        return (
            f"{self.cores} cores ({self.cpu}), {self.memory_gib:.0f} GiB, Linux {self.kernel}, "
            f"Python {self.python}, open-files limit {self.open_files:,}"
        )


def machine_info() -> MachineInfo:
    cpu = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.partition(":")[2].strip()
    except OSError:
        pass
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return MachineInfo(
        cpu=cpu,
        cores=os.cpu_count() or 1,
        memory_gib=mem_kib / 1024 / 1024,
        kernel=platform.release(),
        python=platform.python_version(),
        open_files=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    )


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
