#!/usr/bin/env python3
"""Writes scripts/hot-code.txt: the functions of the daemon's own binary that run after READY=1, in the order the
linker should place them first in `.text` (scripts/link-order.rs passes the file to lld).

After READY the daemon drops its start-up code from memory (src/memory.rs, `release_startup_code`); what runs later
is faulted in again, and the kernel maps up to 64 KiB around every fault. With the steady-state code spread over
the whole 17 MB `.text`, ten bots made nearly all of it resident again. Gathered in one place, it stays small.

How: each workload runs under `valgrind --tool=callgrind` with instrumentation switched on only once READY=1 has
arrived, so exactly the functions that ran afterwards are counted (no sampling: a function run once is listed
too, since one fault is what it costs). Workloads, against a local Synapse as in scripts/bench.py:
- `ping` bots: joins of a shared room and a room each, sequential pings, 8 senders at once, /metrics and /health;
- an `exec` bot (examples/echo-bot.py): a join and sequential pings.
The hottest functions (by instructions) come first.

Usage: python3 scripts/link-order.py [--out scripts/hot-code.txt] [--keep]
Needs valgrind (apt-get install valgrind) and a built target/release/maubot. Slow (valgrind): 5-10 minutes.
Regenerate after changes to the event path; stale names only cost memory (lld skips names it does not find).
"""
import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import (BINARY, ROOT, Deployment, Person, Synapse, a_room_each, concurrent_load,  # noqa: E402
                   one_shared_room, sequential_round_trips)


def start_under_callgrind(deployment, out_dir):
    """Starts `maubot run` of `deployment` under callgrind, instrumentation off, and switches it on once READY=1
    has arrived. Returns the valgrind process and the path of its output."""
    out = os.path.join(out_dir, f"callgrind.{os.path.basename(deployment.dir)}.out")
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--demangle=no", "--compress-strings=no",
                "--compress-pos=no", f"--callgrind-out-file={out}"]
    deployment.start(wrapper=valgrind, extra_env={"WATCHDOG_USEC": "20000000"}, timeout=600)
    # WATCHDOG=1 keep-alives and the start-up code's release follow READY=1 directly; let them pass.
    time.sleep(2)
    subprocess.run(["callgrind_control", "--instr=on", str(deployment.proc.pid)], check=True,
                   stdout=subprocess.DEVNULL)
    return deployment.proc, out


def stop(proc, out):
    """Dumps what ran since READY (to `out`.1; the shutdown that follows goes to `out`, which is not read) and
    stops the daemon. Returns the dump's path."""
    subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, stdout=subprocess.DEVNULL)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    return out + ".1"


def ping_workload(work, synapse, person, out_dir):
    deployment = Deployment(work, synapse, 3)
    proc, out = start_under_callgrind(deployment, out_dir)
    try:
        shared = one_shared_room(person, deployment.users)
        rooms = a_room_each(person, deployment.users)
        room, bot = rooms[0]
        sequential_round_trips(person, room, bot, 10)
        sequential_round_trips(person, shared, deployment.users[1], 3)
        concurrent_load(synapse, person, rooms, 8, 48)
        for path in ("/metrics", "/health"):
            urllib.request.urlopen(f"http://127.0.0.1:{deployment.api_port}{path}", timeout=30).read()
        return stop(proc, out)
    finally:
        proc.kill()  # a workload that failed leaves no daemon under valgrind behind


def exec_workload(work, synapse, person, out_dir):
    deployment = Deployment(work, synapse, 1, exec=True)
    proc, out = start_under_callgrind(deployment, out_dir)
    try:
        bot = deployment.users[0]
        room = person.api.create_room([bot])
        person.api.wait_for_members(room, [bot], timeout=300)
        sequential_round_trips(person, room, bot, 10)
        return stop(proc, out)
    finally:
        proc.kill()


def functions_of(path, binary):
    """{mangled function name: instructions} of `binary`'s own functions in a callgrind output file (names
    uncompressed)."""
    costs = collections.Counter()
    binary = os.path.realpath(binary)
    obj, fn = None, None
    in_call = False
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("ob="):
                obj = os.path.realpath(line[3:].strip())
            elif line.startswith("fl=") or line.startswith("fi=") or line.startswith("fe="):
                continue
            elif line.startswith("fn="):
                fn = re.sub(r"'\d+$", "", line[3:].strip())  # recursion levels: foo'2
                costs.setdefault(fn, 0) if obj == binary else None
                in_call = False
            elif line.startswith("calls="):
                in_call = True  # the next cost line is the call's inclusive cost, not this function's
            elif line[:1].isdigit() or line[:1] in "+-*":
                if in_call:
                    in_call = False
                elif obj == binary and fn:
                    parts = line.split()
                    if len(parts) > 1:
                        costs[fn] += int(parts[1])
    return costs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(HERE, "hot-code.txt"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory (callgrind files, logs)")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is needed: apt-get install valgrind")
    work = tempfile.mkdtemp(prefix="maubot-link-order-")
    synapse = Synapse(work)
    try:
        person = Person(synapse)
        outputs = [ping_workload(work, synapse, person, work), exec_workload(work, synapse, person, work)]
    finally:
        synapse.stop()
    costs = collections.Counter()
    for output in outputs:
        costs.update(functions_of(output, BINARY))
    # Code valgrind found no symbol for is named by its address; lld orders named symbols only.
    names = [name for name, _ in sorted(costs.items(), key=lambda item: (-item[1], item[0]))
             if not name.startswith("0x")]
    with open(args.out, "w") as f:
        f.write("\n".join(names) + "\n")
    print(f"{len(names)} functions written to {os.path.relpath(args.out, ROOT)}")
    if args.keep:
        print(f"work directory: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
