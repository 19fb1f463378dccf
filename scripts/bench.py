#!/usr/bin/env python3
"""Benchmark: the real daemon against a local Synapse. Prints a table and writes JSON.

Measures process RSS with 1 and with N bots (each a separate bot user, all in one shared room), time from exec to
READY=1 (real sd_notify socket), time from exec to the first pong (a ping sent while the daemon was down),
`!ping` -> `pong` round trip (median, p95) over sequential pings, and a burst of pings sent as fast as this client
can: pongs per second and how many were lost.

Usage: python3 scripts/bench.py [--instances 10] [--pings 50] [--burst 200] [--json PATH] [--no-build]
Run it on an otherwise idle machine; it is not a test and asserts nothing.
"""
import argparse
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from matrixlib import Api, replies_in, room_events  # noqa: E402

BINARY = os.environ.get("MAUBOT_BENCH_BINARY") or os.path.join(ROOT, "target", "release", "maubot")
SERVER_NAME = "bench.test"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_metrics(port):
    """The daemon's own memory gauges from /metrics (heap in use and free, SQLite), in KiB."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        for name in ("maubot_heap_in_use_bytes", "maubot_heap_free_bytes", "maubot_sqlite_memory_bytes"):
            if line.startswith(name + " "):
                out[name[len("maubot_"):-len("_bytes")] + "_kib"] = int(line.split()[1]) // 1024
    return out


def memory_kib(pid):
    """VmRSS and its parts (RssAnon: heap and stacks; RssFile: the mapped binary and libraries), in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"):
                out[key] = int(value.split()[0])
    return out


class Synapse:
    def __init__(self, work):
        venv = subprocess.run(["bash", os.path.join(HERE, "install-synapse.sh")], check=True,
                              capture_output=True, text=True).stdout.strip()
        self.secret = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data = os.path.join(work, "synapse")
        python = os.path.join(venv, "bin", "python")
        subprocess.run([python, os.path.join(HERE, "synapse-config.py"), data, str(self.port), self.secret,
                        SERVER_NAME], check=True)
        self.proc = subprocess.Popen([python, "-m", "synapse.app.homeserver", "-c", f"{data}/homeserver.yaml"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
            except Exception:
                time.sleep(0.2)
                continue
            return
        raise SystemExit("Synapse did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


EXAMPLE_BOT = os.path.join(ROOT, "examples", "echo-bot.py")


class Deployment:
    """A config with `count` bots registered by setup through the shared secret: built-in `ping` bots, or with
    `exec=True` the example program (examples/echo-bot.py) behind the `exec` plugin type."""

    def __init__(self, work, synapse, count, exec=False):
        self.dir = os.path.join(work, f"bots-{count}" + ("-exec" if exec else ""))
        os.makedirs(os.path.join(self.dir, "credentials"))
        with open(os.path.join(self.dir, "credentials", "registration-shared-secret"), "w") as f:
            f.write(synapse.secret)
        self.users = [f"@bench{i}-{secrets.token_hex(2)}:{SERVER_NAME}" for i in range(count)]
        self.api_port = free_port()
        lines = [
            f"state_dir: {self.dir}/state",
            f"server: {{port: {self.api_port}}}",
            "logging: {level: 'warn,maubot=info'}",
            "homeservers:",
            f"  local: {{url: '{synapse.url}', registration_shared_secret: {{credential: registration-shared-secret}}}}",
            "instances:",
        ]
        kind = "exec" if exec else "ping"
        command = f"command: '{EXAMPLE_BOT}', " if exec else ""
        for i, user in enumerate(self.users):
            lines.append(f"  bot{i}: {{type: {kind}, user: '{user}', "
                         f"config: {{{command}allow_invites_from: ['@*:{SERVER_NAME}']}}}}")
        self.config = os.path.join(self.dir, "config.yaml")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.env = dict(os.environ, CREDENTIALS_DIRECTORY=os.path.join(self.dir, "credentials"))
        self.env.pop("RUST_LOG", None)
        subprocess.run([BINARY, "--config", self.config, "setup"], check=True, env=self.env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc = None

    def start(self):
        """Starts `maubot run`; returns seconds from exec to READY=1."""
        sock_path = os.path.join(self.dir, "notify.sock")
        if os.path.exists(sock_path):
            os.unlink(sock_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(sock_path)
        listener.settimeout(60)
        env = dict(self.env, NOTIFY_SOCKET=sock_path)
        started = time.monotonic()
        self.proc = subprocess.Popen([BINARY, "--config", self.config, "run"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "run.log"), "a"))
        self.started = started
        while True:
            message = listener.recv(4096).decode()
            if "READY=1" in message:
                ready = time.monotonic() - started
                break
        listener.close()
        return ready

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


class Person:
    def __init__(self, synapse):
        self.api = Api(synapse.url).register_with_secret(synapse.secret, "person-" + secrets.token_hex(3), "pw")
        self.since = self.api.sync()["next_batch"]

    def wait_replies(self, room, bot, targets, timeout):
        """Waits until each of `targets` got a reply from `bot`; returns {target: monotonic arrival}."""
        arrived = {}
        deadline = time.monotonic() + timeout
        wanted = set(targets)
        while wanted - set(arrived) and time.monotonic() < deadline:
            response = self.api.sync(self.since, timeout_ms=1000)
            now = time.monotonic()
            self.since = response["next_batch"]
            for sender, target, _ in replies_in(response, room):
                if sender == bot and target in wanted and target not in arrived:
                    arrived[target] = now
        return arrived


def mib(memory):
    text = (f"{memory['VmRSS'] / 1024:.1f} MiB (anon {memory['RssAnon'] / 1024:.1f}, "
            f"file {memory['RssFile'] / 1024:.1f}")
    if "heap_in_use_kib" in memory:
        text += (f"; heap in use {memory['heap_in_use_kib'] / 1024:.1f}, free {memory['heap_free_kib'] / 1024:.1f}"
                 f"; SQLite {memory['sqlite_memory_kib'] / 1024:.1f}")
    return text + f"; {memory['Threads']} threads)"


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def sequential_round_trips(person, room, bot, pings):
    """Seconds from sending each of `pings` `!ping`s, one after the other, until the person sees the reply."""
    round_trips = []
    for _ in range(pings):
        sent = time.monotonic()
        ping = person.api.send_text(room, "!ping")
        arrived = person.wait_replies(room, bot, [ping], 30)
        if ping in arrived:
            round_trips.append(arrived[ping] - sent)
    return round_trips


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--pings", type=int, default=50)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--starts", type=int, default=5, help="cold starts to take READY/first-pong medians over")
    parser.add_argument("--json", default=os.path.join(ROOT, "target", "bench", "results.json"))
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) for inspection")
    args = parser.parse_args()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

    work = tempfile.mkdtemp(prefix="maubot-bench-")
    synapse = Synapse(work)
    results = {}
    try:
        # One bot: start-up, round trip, burst.
        one = Deployment(work, synapse, 1)
        bot = one.users[0]
        person = Person(synapse)
        one.start()
        room = person.api.create_room([bot])
        person.api.wait_for_members(room, [bot])
        one.stop()

        readies, first_pongs = [], []
        for _ in range(args.starts):
            ping = person.api.send_text(room, "!ping")
            readies.append(one.start())
            arrived = person.wait_replies(room, bot, [ping], 30)
            if ping in arrived:
                first_pongs.append(arrived[ping] - one.started)
            time.sleep(2)
            one.stop()
        one.start()
        time.sleep(3)
        memory = dict(memory_kib(one.proc.pid), **memory_metrics(one.api_port))
        results["rss_kib_1_bot"] = memory["VmRSS"]
        results["memory_kib_1_bot"] = memory
        results["ready_s_median"] = statistics.median(readies)
        results["first_pong_s_median"] = statistics.median(first_pongs) if first_pongs else None

        round_trips = sequential_round_trips(person, room, bot, args.pings)
        results["round_trip_ms_median"] = 1000 * statistics.median(round_trips)
        results["round_trip_ms_p95"] = 1000 * percentile(round_trips, 95)
        results["round_trip_lost"] = args.pings - len(round_trips)

        # The burst is judged on the room's history (server timestamps), not on what one client's sync shows.
        first_sent = time.monotonic()
        burst = [person.api.send_text(room, "!ping") for _ in range(args.burst)]
        sent_all = time.monotonic()
        wanted = set(burst)
        deadline = time.monotonic() + 120
        while True:
            events = room_events(person.api, room, limit=4 * args.burst + 200)
            sent_ts = {e["event_id"]: e["origin_server_ts"] for e in events if e["event_id"] in wanted}
            replies = {}
            for e in events:
                target = e.get("content", {}).get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id")
                if e.get("sender") == bot and target in wanted:
                    replies.setdefault(target, e["origin_server_ts"])
            if len(replies) == len(wanted) or time.monotonic() > deadline:
                break
            time.sleep(1)
        span_s = (max(replies.values()) - min(sent_ts.values())) / 1000 if replies else 0
        results["burst_pings"] = args.burst
        results["burst_send_s"] = sent_all - first_sent
        results["burst_pongs_per_s"] = len(replies) / span_s if span_s else 0
        results["burst_lost"] = args.burst - len(replies)
        one.stop()

        # The same round trip through an `exec` bot: the example program behind the line protocol.
        program = Deployment(work, synapse, 1, exec=True)
        program.start()
        exec_bot = program.users[0]
        exec_room = person.api.create_room([exec_bot])
        person.api.wait_for_members(exec_room, [exec_bot])
        round_trips = sequential_round_trips(person, exec_room, exec_bot, args.pings)
        results["exec_round_trip_ms_median"] = 1000 * statistics.median(round_trips)
        results["exec_round_trip_ms_p95"] = 1000 * percentile(round_trips, 95)
        program.stop()

        # N bots in one shared room.
        many = Deployment(work, synapse, args.instances)
        results[f"ready_s_{args.instances}_bots"] = many.start()
        shared = person.api.create_room(many.users)
        person.api.wait_for_members(shared, many.users, timeout=120)
        time.sleep(3)
        memory = dict(memory_kib(many.proc.pid), **memory_metrics(many.api_port))
        results[f"rss_kib_{args.instances}_bots"] = memory["VmRSS"]
        results[f"memory_kib_{args.instances}_bots"] = memory
        many.stop()
    finally:
        synapse.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    results["machine"] = {
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    n = args.instances
    rows = [
        ("RSS, 1 bot", mib(results["memory_kib_1_bot"])),
        (f"RSS, {n} bots (shared room)", mib(results[f"memory_kib_{n}_bots"])),
        ("exec -> READY=1, 1 bot (median)", f"{results['ready_s_median'] * 1000:.0f} ms"),
        (f"exec -> READY=1, {n} bots", f"{results[f'ready_s_{n}_bots'] * 1000:.0f} ms"),
        ("exec -> first pong (median)", f"{results['first_pong_s_median'] * 1000:.0f} ms"
         if results["first_pong_s_median"] is not None else "none"),
        (f"round trip, {args.pings} sequential pings: median", f"{results['round_trip_ms_median']:.0f} ms"),
        ("round trip: p95", f"{results['round_trip_ms_p95']:.0f} ms"),
        ("round trip through exec (example program)", f"median {results['exec_round_trip_ms_median']:.0f} ms, "
                                                      f"p95 {results['exec_round_trip_ms_p95']:.0f} ms"),
        (f"burst of {args.burst}: pongs per second", f"{results['burst_pongs_per_s']:.1f}"),
        ("burst: lost replies", f"{results['burst_lost']}"),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
