"""
An ack leaves only after its reading is on disk: proved on a real server
process (the installed C{twistd sensornet-server}) traced by C{strace}.

The test sends native readings with seqs one at a time, waiting for each
ack, so everything the server writes between ack N-1 and ack N belongs to
reading N. In the trace, for each ack it requires: at least one write to
the SQLite WAL file since the previous ack (the reading's frames), and an
C{fsync}/C{fdatasync} of the WAL that starts after the last of those writes
(the commit frame) and ends before the ack's socket write starts.

SQLite writes WAL frames with C{pwrite64} and syncs with C{fdatasync} on
Linux; Twisted sends with C{send} (C{sendto} in the trace), C{sendmsg} or
C{writev}: all are traced. C{-yy} makes strace print the path of every file
descriptor and the addresses of every socket, so fds need no bookkeeping
(and a reused fd number cannot confuse the test). Line order in the trace
is causal order here: the writer thread is stopped at the exit of its
C{fdatasync} until strace has recorded it, and only then can it hand the
result to the reactor thread that writes the ack.

The same test runs with C{?synchronous=normal} and asserts the opposite
(most acks go out before any WAL sync), so it demonstrably tells the two
apart. strace must be installed (C{tests/run.sh} installs it); a missing
strace fails the test, it never skips.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from typing import Dict, List, NamedTuple, Tuple

import pytest

from serverproc import ServerProcess

READINGS = 40
TRACED = "openat,fsync,fdatasync,write,pwrite64,pwritev,pwritev2,sendto,sendmsg,writev"

_LINE = re.compile(r"^(\d+)\s+(\d\d:\d\d:\d\d\.\d+)\s+(.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>")
_CALL = re.compile(r"^(\w+)\((.*)$")
_ACK = re.compile(r'"ack (\d+)\\n')


class Syscall(NamedTuple):
    """
    One traced system call: its name, its arguments as strace printed them,
    the trace lines where it started and ended, and its start time.
    """

    name: str
    args: str
    start: int
    end: int
    time: float


def parseTrace(text: str) -> List[Syscall]:
    """
    The system calls of an C{strace -f -tt} trace, joining the halves of
    calls printed as C{<unfinished ...>} and C{<... resumed>}.
    """
    calls: List[Syscall] = []
    pending: Dict[str, Tuple[str, str, int, float]] = {}
    for index, line in enumerate(text.splitlines()):
        match = _LINE.match(line)
        if match is None:
            continue
        tid, clock, rest = match.groups()
        hours, minutes, seconds = clock.split(":")
        when = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        resumed = _RESUMED.match(rest)
        if resumed is not None:
            started = pending.pop(tid, None)
            if started is not None:
                name, args, start, startTime = started
                calls.append(Syscall(name, args, start, index, startTime))
            continue
        call = _CALL.match(rest)
        if call is None:
            continue  # "+++ exited", "--- SIGTERM", ...
        name, args = call.groups()
        if args.endswith("<unfinished ...>"):
            pending[tid] = (name, args, index, when)
        else:
            calls.append(Syscall(name, args, index, index, when))
    return sorted(calls, key=lambda c: c.start)


class Verdict(NamedTuple):
    """
    What the trace shows for each ack: C{synced} acks had a WAL sync after
    their reading's last WAL write; C{unsynced} did not. C{gaps}: for each
    unsynced ack, seconds from the ack to the next WAL sync (if any).
    """

    synced: List[int]
    unsynced: List[int]
    gaps: List[float]


def judge(calls: List[Syscall], walPath: str) -> Verdict:
    """
    Check, ack by ack, that the reading's WAL frames were synced before the
    ack was written.
    """
    onWal = re.compile(r"^\d+<" + re.escape(walPath) + ">").match
    onTCP = re.compile(r"^\d+<TCP:\[").match
    walWrites = [c for c in calls if c.name in ("write", "pwrite64", "pwritev", "pwritev2", "writev") and onWal(c.args)]
    walSyncs = [c for c in calls if c.name in ("fsync", "fdatasync") and onWal(c.args)]
    acks = []
    for c in calls:
        if c.name in ("sendto", "sendmsg", "write", "writev", "send") and onTCP(c.args):
            acks.extend((int(seq), c) for seq in _ACK.findall(c.args))
    seqs = [seq for seq, _ in acks]
    assert seqs == list(range(READINGS)), f"acks in the trace: {seqs}"
    synced, unsynced, gaps = [], [], []
    previous = -1
    for seq, ack in acks:
        frames = [w for w in walWrites if previous < w.start < ack.start]
        assert frames, f"no WAL write between ack {seq - 1} and ack {seq}: is the trace complete?"
        last = max(w.end for w in frames)
        if any(last < s.start and s.end < ack.start for s in walSyncs):
            synced.append(seq)
        else:
            unsynced.append(seq)
            later = [s.time - ack.time for s in walSyncs if s.start > ack.start]
            if later:
                gaps.append(min(later))
        previous = ack.start
    return Verdict(synced, unsynced, gaps)


def requireStrace() -> str:
    """
    The path of a working strace: fail (never skip) with what to do when it
    is missing or may not trace here.
    """
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail(
            "strace is not installed: the durability order cannot be proved without it "
            "(tests/run.sh installs it; by hand: apt-get install strace)"
        )
    check = subprocess.run([strace, "-f", "-o", os.devnull, "true"], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        pytest.fail(
            f"strace cannot trace here ({check.stderr.strip()}): it needs ptrace, i.e. root or "
            "CAP_SYS_PTRACE, and kernel.yama.ptrace_scope <= 1 for a child process"
        )
    return strace


class TracedServer(ServerProcess):
    """
    The server under C{strace -f}; L{terminate} signals the traced server,
    and waits for strace to write the rest of the trace and exit.
    """

    def __init__(self, store: str, workdir: str, tracePath: str) -> None:
        super().__init__(store, workdir)
        self.tracePath = tracePath

    def command(self) -> List[str]:
        return [requireStrace(), "-f", "-tt", "-yy", "-e", f"trace={TRACED}", "-o", self.tracePath, *super().command()]

    def traced(self) -> int:
        """
        The pid of the server itself: strace's child.
        """
        assert self.process is not None
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.process.pid:
                    return int(entry)
        raise AssertionError("strace has no child process")

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.traced(), signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
                raise AssertionError("the traced server did not stop on SIGTERM")
        return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.kill(self.traced(), signal.SIGKILL)
            except AssertionError:
                pass
            self.process.kill()
            self.process.wait(timeout=30)


def sendOneByOne(port: int, count: int) -> None:
    """
    Send C{count} native readings with seqs 0..count-1, each after the
    previous one's ack.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        replies = s.makefile("rb")
        for seq in range(count):
            s.sendall(f"temperature,sensor=fsync-order,unit=C value={20 + seq * 0.1:.1f},seq={seq}i\n".encode())
            reply = replies.readline()
            assert reply == f"ack {seq}\n".encode(), reply


@pytest.mark.parametrize("mode", ["default", "normal"])
def test_ack_leaves_only_after_the_wal_is_synced(tmp_path, mode: str) -> None:
    """
    Default store (synchronous=FULL): every ack comes after an fsync of the
    WAL that followed its reading's frames. With ?synchronous=normal the
    same trace shows most acks sent before any sync of their frames (the
    WAL is synced only at checkpoints), which proves the test can tell.
    """
    dbPath = str(tmp_path / "order.db")
    store = f"sqlite:{dbPath}" + ("?synchronous=normal" if mode == "normal" else "")
    tracePath = str(tmp_path / "trace.txt")
    server = TracedServer(store, str(tmp_path), tracePath)
    server.start(timeout=60)
    try:
        sendOneByOne(server.port, READINGS)
    finally:
        status = server.terminate()
    with open(tracePath, encoding="utf-8", errors="replace") as f:
        calls = parseTrace(f.read())
    verdict = judge(calls, dbPath + "-wal")
    gaps = ", ".join(f"{g * 1000:.0f}" for g in verdict.gaps)
    print(f"{mode}: {len(verdict.synced)} acks after their WAL sync, {len(verdict.unsynced)} before it; "
          f"ms from an unsynced ack to the next WAL sync: [{gaps}]")
    assert status in (0, -signal.SIGTERM), server.log()  # twistd re-raises SIGTERM once stopped
    if mode == "default":
        assert verdict.unsynced == [], verdict
        assert len(verdict.synced) == READINGS
    else:
        # A background checkpoint (every 0.25 s) syncs the WAL too and may
        # by chance land between a reading's frames and its ack.
        assert len(verdict.unsynced) >= READINGS // 2, verdict
