#!/usr/bin/env python3
"""Where one bot's time goes per `!ping`: sequential pings against a local Synapse under `perf record`, `strace`
counting the syscalls (fsyncs above all), and the bot's CPU per pong from /proc/PID/stat.

Usage: python3 scripts/profile.py [--pings 200] [--no-perf] [--no-strace] [--out target/profile]
Writes `perf report` text (by shared object and by symbol) and the strace summary into --out; prints the
figures. Run it on an otherwise idle machine; it asserts nothing.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import ROOT, Synapse, cpu_seconds, one_bot_in_a_room, sequential_round_trips  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--no-perf", action="store_true")
    parser.add_argument("--no-strace", action="store_true")
    parser.add_argument("--out", default=os.path.join(ROOT, "target", "profile"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="maubot-profile-")
    synapse = Synapse(work)
    try:
        one, bot, person, room = one_bot_in_a_room(work, synapse)
        sequential_round_trips(person, room, bot, 10)  # warm up
        pid = one.proc.pid
        watchers = []
        if not args.no_perf:
            data = os.path.join(args.out, "perf.data")
            call_graph = os.environ.get("PROFILE_CALL_GRAPH", "fp")  # dwarf,32768 for whole call chains
            watchers.append(subprocess.Popen(["perf", "record", "-F", "1999", "--call-graph", call_graph,
                                              "-o", data, "-p", str(pid)],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if not args.no_strace:
            watchers.append(subprocess.Popen(["strace", "-f", "-c", "-o", os.path.join(args.out, "strace.txt"),
                                              "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1)
        cpu_before = cpu_seconds(pid)
        round_trips = sequential_round_trips(person, room, bot, args.pings)
        cpu = cpu_seconds(pid) - cpu_before
        for watcher in watchers:
            watcher.send_signal(2)
            watcher.wait()
        one.stop()
        round_trips.sort()
        median = 1000 * round_trips[len(round_trips) // 2]
        print(f"pongs: {len(round_trips)}/{args.pings}; round trip median {median:.0f} ms")
        print(f"bot CPU per pong (traced, so higher than untraced): {1000 * cpu / max(1, len(round_trips)):.1f} ms")
        if not args.no_perf:
            for sort, name in (("dso", "by-object"), ("dso,sym", "by-symbol")):
                with open(os.path.join(args.out, f"perf-{name}.txt"), "w") as f:
                    subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio", "--sort", sort,
                                    "-g", "none", "--percent-limit", "0.3"], stdout=f, stderr=subprocess.DEVNULL)
            with open(os.path.join(args.out, "perf-callers.txt"), "w") as f:
                subprocess.run(["perf", "report", "-i", data, "--children", "--stdio", "--sort", "sym",
                                "-g", "caller,0.5,callee,function,percent", "--percent-limit", "2"],
                               stdout=f, stderr=subprocess.DEVNULL)
        print(f"reports in {args.out}")
    finally:
        synapse.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
