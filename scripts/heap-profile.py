#!/usr/bin/env python3
"""Where the heap of N running bots goes: a deployment of `--bots` ping bots, each in a room of its own, runs
under `heaptrack`; a few seconds after the last bot joined, the daemon is killed with SIGKILL, so the allocations
heaptrack reports as never freed are exactly those live at that moment. They are grouped by who made them (the
first of matrix-sdk's broadcast channels, SQLite, the HTTP client, matrix-sdk's crates, this daemon, in that
order, found in each allocation's backtrace) and printed in MiB and KiB per bot. SQLite's share is split further
by the SQLite function that allocated (schema, page buffers, prepared statements, per-connection functions).

Usage: python3 scripts/heap-profile.py [--bots 100] [--settle 8] [--out target/heap-profile]
Needs `heaptrack` (Debian: apt-get install heaptrack). Measures target/release/maubot, or MAUBOT_BENCH_BINARY.
It asserts nothing; docs/benchmark.md ("Where a bot's heap goes") has a run and what it says.
"""
import argparse
import bisect
import collections
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import BINARY, ROOT, Deployment, Person, Synapse, a_room_each  # noqa: E402

# First match wins, searched in the whole backtrace of an allocation.
GROUPS = [
    ("matrix-sdk: broadcast channels", "tokio-1.", "sync/broadcast.rs"),
    ("SQLite (matrix-sdk's stores)", None, "sqlite3.c"),
    ("HTTP connections", None, "/hyper-"),
    ("matrix-sdk-crypto", None, "/matrix-sdk-crypto-"),
    ("matrix-sdk, matrix-sdk-base", None, "/matrix-sdk-"),
    ("this daemon", None, "src/instance/"),
    ("this daemon", None, "src/host/"),
]
BLOCK = re.compile(r"^([0-9.]+)([KMG]?)B? leaked over (\d+) calls from:")
MULTIPLIER = {"": 1, "K": 1024, "M": 1 << 20, "G": 1 << 30}


def allocations(report):
    """[(bytes, [frame paths])] from `heaptrack_print --print-leaks` output."""
    out, current = [], None
    for line in report.splitlines():
        match = BLOCK.match(line)
        if match:
            current = (float(match.group(1)) * MULTIPLIER[match.group(2)], [])
            out.append(current)
        elif current is not None and line.strip().startswith("at "):
            current[1].append(line.strip()[3:])
        elif line and not line.startswith(" "):
            current = None
    return out


def group_of(frames):
    text = "\n".join(frames)
    for name, required, marker in GROUPS:
        if marker in text and (required is None or required in text):
            return name
    return "other"


def sqlite_functions(source):
    """A lookup from a line of sqlite3.c to the function it belongs to."""
    starts, names = [], []
    with open(source, errors="replace") as f:
        for number, line in enumerate(f, 1):
            match = re.match(r"^(?:SQLITE_PRIVATE |SQLITE_API |static |SQLITE_NOINLINE )*[A-Za-z_][\w *]*?\b(\w+)\(",
                             line)
            if match and not line.rstrip().endswith(";"):
                starts.append(number)
                names.append(match.group(1))
    return lambda n: names[bisect.bisect_right(starts, n) - 1]


SQLITE_KINDS = [
    ("page buffers and caches", ("pcache1", "PagerSetPagesize", "allocateTempSpace", "PagerOpen", "WalOpen")),
    ("schema (tables, columns, indexes)", ("StartTable", "AddColumn", "CreateIndex", "AllocateIndexObject",
                                           "EndTable", "AddPrimaryKey", "AnalysisLoad")),
    ("functions and modules registered per connection", ("CreateFunc", "FindFunction", "VtabCreateModule",
                                                         "createModule", "Fts5", "fts5", "Collation",
                                                         "createFunctionApi")),
    ("prepared statements", ("Vdbe", "growOp", "FinishCoding", "Insert", "Select", "Expr")),
]


def sqlite_kind(frames, function_at):
    names = [function_at(int(f.rsplit(":", 1)[1])) for f in frames if "sqlite3.c:" in f]
    for kind, markers in SQLITE_KINDS:
        if any(marker in name for name in names[:8] for marker in markers):
            return kind
    return "other SQLite"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bots", type=int, default=100)
    parser.add_argument("--settle", type=float, default=8, help="seconds after the last join before the kill")
    parser.add_argument("--out", default=os.path.join(ROOT, "target", "heap-profile"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    trace = os.path.join(args.out, f"heaptrack-{args.bots}")
    for old in glob.glob(trace + ".*"):
        os.unlink(old)
    work = tempfile.mkdtemp(prefix="maubot-heap-")
    synapse = Synapse(work)
    try:
        deployment = Deployment(work, synapse, args.bots)
        person = Person(synapse)
        deployment.start(wrapper=["heaptrack", "-o", trace], timeout=300)
        try:
            a_room_each(person, deployment.users)
            time.sleep(args.settle)
        finally:
            # heaptrack (a shell script) runs the daemon as its child: SIGKILL to the daemon only; heaptrack then
            # finishes writing the trace and exits.
            subprocess.run(["pkill", "-KILL", "-P", str(deployment.proc.pid), "-x", os.path.basename(BINARY)[:15]],
                           check=False)
            deployment.proc.wait(timeout=120)
    finally:
        synapse.stop()
    [data] = glob.glob(trace + ".*")
    report = subprocess.run(["heaptrack_print", data, "--print-leaks", "1", "--print-peaks", "0",
                             "--print-allocators", "0", "--print-temporary", "0", "-n", "100000", "-s", "100000"],
                            capture_output=True, text=True, check=True).stdout
    with open(os.path.join(args.out, "live.txt"), "w") as f:
        f.write(report)
    found = allocations(report)
    groups, kinds = collections.Counter(), collections.Counter()
    source = glob.glob(os.path.expanduser("~/.cargo/registry/src/*/libsqlite3-sys-*/sqlite3/sqlite3.c"))
    function_at = sqlite_functions(source[0]) if source else None
    for size, frames in found:
        group = group_of(frames)
        groups[group] += size
        if group.startswith("SQLite") and function_at:
            kinds[sqlite_kind(frames, function_at)] += size
    total = sum(groups.values())
    print(f"live heap of {args.bots} bots: {total / 2**20:.1f} MiB ({total / 1024 / args.bots:.0f} KiB per bot)")
    for name, size in groups.most_common():
        print(f"  {name:<52} {size / 2**20:6.2f} MiB  {size / 1024 / args.bots:5.0f} KiB per bot")
        if name.startswith("SQLite"):
            for kind, part in kinds.most_common():
                print(f"    {kind:<50} {part / 2**20:6.2f} MiB  {part / 1024 / args.bots:5.0f} KiB per bot")
    print(f"report: {os.path.join(args.out, 'live.txt')}")


if __name__ == "__main__":
    main()
