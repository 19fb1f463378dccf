#!/usr/bin/env python3
"""Benchmark: the real daemon against a local Synapse. Prints a table and writes JSON.

Measures process RSS with 1 and with N bots (each a separate bot user, all in one shared room; the median over
--memory-runs fresh deployments), time from exec to READY=1 (real sd_notify socket), time from exec to the first
pong (a ping sent while the daemon was down), `!ping` -> `pong` round trip (median, p95) over sequential pings,
the bot's CPU per pong and its turnaround in Synapse's access log, a burst of pings sent as fast as this client
can (pongs per second, lost), several senders at once against 1 bot and 3 bots, the round trip through an `exec`
bot, exactly once across a stall (SIGSTOP while 100 pings are sent, then SIGCONT) and a crash (SIGKILL half-way
through a burst, then a restart): lost and duplicated replies, a backup of N running bots (time, archive size)
and its restore, and a scale phase (--scale bots, a room each: RSS, memory per bot beyond N, READY after a
restart).
--compare-maubot runs the same phases against Python maubot 0.6.0 in the same run.

Usage: python3 scripts/bench.py [--instances 10] [--pings 50] [--burst 200] [--scale 100] [--memory-runs 3]
                                [--compare-maubot] [--json PATH] [--no-build]
Run it on an otherwise idle machine; it is not a test and asserts nothing.
"""
import argparse
import datetime
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
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


def cpu_seconds(pid):
    """User + system CPU time the process (all its threads) used so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        self.log = os.path.join(data, "homeserver.log")
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
    `exec=True` the example program (examples/echo-bot.py) behind the `exec` plugin type; `binary` is the daemon
    to run (default BINARY)."""

    def __init__(self, work, synapse, count, exec=False, binary=None):
        self.binary = binary or BINARY
        self.dir = tempfile.mkdtemp(prefix=f"bots-{count}" + ("-exec-" if exec else "-"), dir=work)
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
            f"  local: {{url: '{synapse.url}', "
            "registration_shared_secret: {credential: registration-shared-secret}}",
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
        subprocess.run([self.binary, "--config", self.config, "setup"], check=True, env=self.env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc = None

    def start(self, wrapper=(), extra_env=None, timeout=60):
        """Starts `maubot run` (behind `wrapper`, a command prefix such as valgrind's, with `extra_env`); returns
        seconds from exec to READY=1, waiting up to `timeout` seconds for it."""
        sock_path = os.path.join(self.dir, "notify.sock")
        if os.path.exists(sock_path):
            os.unlink(sock_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(sock_path)
        listener.settimeout(timeout)
        env = dict(self.env, NOTIFY_SOCKET=sock_path, **(extra_env or {}))
        started = time.monotonic()
        self.proc = subprocess.Popen([*wrapper, self.binary, "--config", self.config, "run"], env=env,
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
            for sender, target, _, _ in replies_in(response, room):
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


def history_figures(api, rooms_pings, bots):
    """Round trips (ms, server timestamps: ping accepted -> reply accepted) and pongs per second of pings sent
    into several rooms, judged on each room's history; waits up to 120 s for every reply. `rooms_pings` maps a
    room to the ping event ids sent there, `bots` a room to the bot that answers in it."""
    deadline = time.monotonic() + 120
    while True:
        sent_ts, replies = {}, {}
        for room, pings in rooms_pings.items():
            wanted = set(pings)
            events = room_events(api, room, limit=4 * len(pings) + 200)
            sent_ts.update({e["event_id"]: e["origin_server_ts"] for e in events if e["event_id"] in wanted})
            for e in events:
                target = e.get("content", {}).get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id")
                if e.get("sender") == bots[room] and target in wanted:
                    replies.setdefault(target, e["origin_server_ts"])
        total = sum(len(p) for p in rooms_pings.values())
        if len(replies) == total or time.monotonic() > deadline:
            break
        time.sleep(1)
    # Answers that arrive after the last missing one would be missed: give a late duplicate a moment to show.
    time.sleep(2)
    answers = {}
    for room, pings in rooms_pings.items():
        wanted = set(pings)
        answers.update({p: 0 for p in wanted})
        for e in room_events(api, room, limit=4 * len(pings) + 200):
            target = e.get("content", {}).get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id")
            if e.get("sender") == bots[room] and target in wanted:
                answers[target] += 1
    round_trips = [replies[p] - sent_ts[p] for p in replies if p in sent_ts]
    span_s = (max(replies.values()) - min(sent_ts.values())) / 1000 if replies else 0
    bot_of = {ping: bots[room] for room, pings in rooms_pings.items() for ping in pings}
    return {
        # (bot, when the homeserver accepted the ping, in ms): for scripts/load-ab.py's breakdown
        "pings_accepted": sorted((bot_of[p], ts) for p, ts in sent_ts.items()),
        "pings": total,
        "lost": total - len(replies),
        "duplicated": sum(1 for count in answers.values() if count > 1),
        "pongs_per_s": len(replies) / span_s if span_s else 0,
        "round_trip_ms_median": statistics.median(round_trips) if round_trips else None,
        "round_trip_ms_p95": percentile(round_trips, 95) if round_trips else None,
    }


def concurrent_load(synapse, owner, targets, senders, pings):
    """`senders` clients send `pings` `!ping`s at once (each its share, one after the other), round-robin over
    `targets` (room, bot; rooms `owner` created); returns history_figures of the replies."""
    people = [Person(synapse) for _ in range(senders)]
    for room, _ in targets:
        for person in people:
            owner.api.invite(room, person.api.user_id())
            person.api.join(room)
    sent = {room: [] for room, _ in targets}
    lock = threading.Lock()

    def send(i, person):
        for k in range(pings // senders):
            room = targets[(i + k) % len(targets)][0]
            event = person.api.send_text(room, "!ping")
            with lock:
                sent[room].append(event)

    threads = [threading.Thread(target=send, args=(i, p)) for i, p in enumerate(people)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return history_figures(owner.api, sent, dict(targets))


def stalled(deployment, person, room, bot, pings):
    """Exactly once across a stall: the daemon stopped with SIGSTOP while `pings` `!ping`s are sent, then
    continued (SIGCONT); history_figures of the replies."""
    deployment.proc.send_signal(signal.SIGSTOP)
    try:
        sent = [person.api.send_text(room, "!ping") for _ in range(pings)]
    finally:
        deployment.proc.send_signal(signal.SIGCONT)
    return history_figures(person.api, {room: sent}, {room: bot})


def crashed(deployment, person, room, bot, pings):
    """Exactly once across a crash: `pings` `!ping`s sent back to back; when half are out, the daemon is killed
    (SIGKILL) and the rest are sent while it is down; then it is started again. history_figures of the replies."""
    sent = []
    for i in range(pings):
        if i == pings // 2:
            deployment.proc.kill()
            deployment.proc.wait()
        sent.append(person.api.send_text(room, "!ping"))
    deployment.start()
    return history_figures(person.api, {room: sent}, {room: bot})


# A line of Synapse's access log: (end time, requester, seconds taken, method, path).
ACCESS_LINE = re.compile(r"^(\S+ \S+) - synapse\.access\.http\.\d+ - \d+ - INFO - \S+ - \S+ - \d+ - "
                         r"\{(.*?)\} Processed request: ([0-9.]+)sec.*?\"(\w+) (\S+) ")


def bot_requests(log_path, users, since, until, sends="/send/"):
    """The requests `users` made that ended between `since` and `until` (time.time()), from Synapse's access log:
    {user: {"sync": [(start, end)], "send": [(start, end)], "other": count}}, times in seconds; a PUT whose path
    holds `sends` is a send."""
    requests = {user: {"sync": [], "send": [], "other": 0} for user in users}
    with open(log_path, errors="replace") as f:
        for line in f:
            match = ACCESS_LINE.match(line)
            if not match or match.group(2) not in users:
                continue
            end = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if not since <= end <= until:
                continue
            method, path, mine = match.group(4), match.group(5), requests[match.group(2)]
            if method == "GET" and "/sync" in path:
                mine["sync"].append((end - float(match.group(3)), end))
            elif method == "PUT" and sends in path:
                mine["send"].append((end - float(match.group(3)), end))
            else:
                mine["other"] += 1
    return requests


def turnarounds(syncs, sends):
    """The bot's own turnaround per send, in ms: from the end of the latest of its `syncs` that ended before the
    send started (the one that delivered what it answers) to the send's start; both lists of (start, end)."""
    ends = [end for _, end in syncs]
    found = []
    for start, _ in sends:
        before = [end for end in ends if end <= start]
        if before:
            found.append(1000 * (start - max(before)))
    return found


def access_log_turnarounds(log_path, user, since, until):
    """The bot's own turnaround per reply, from Synapse's access log: from the end of the bot's `/sync` that
    delivered a ping to the start of its reply's PUT, in ms, for requests between `since` and `until`."""
    mine = bot_requests(log_path, {user}, since, until, sends="/send/m.room.message/")[user]
    return turnarounds(mine["sync"], mine["send"])


def sequential_phase(synapse, person, room, bot, pid, pings):
    """`pings` sequential round trips: their median and p95, the bot's CPU per pong (process `pid`) and its
    turnaround from Synapse's access log."""
    cpu_before, since = cpu_seconds(pid), time.time()
    round_trips = sequential_round_trips(person, room, bot, pings)
    turnarounds = access_log_turnarounds(synapse.log, bot, since, time.time())
    return {
        "cpu_ms_per_pong": 1000 * (cpu_seconds(pid) - cpu_before) / max(1, len(round_trips)),
        "turnaround_ms_median": statistics.median(turnarounds) if turnarounds else None,
        "round_trip_ms_median": 1000 * statistics.median(round_trips),
        "round_trip_ms_p95": 1000 * percentile(round_trips, 95),
        "round_trip_lost": pings - len(round_trips),
    }


def backup_and_restore(deployment):
    """`maubot backup` of a running deployment, then `maubot restore` of it into a new state directory:
    {backup_s, archive_bytes, restore_s}."""
    archive = os.path.join(deployment.dir, "backup.tar")
    started = time.monotonic()
    subprocess.run([BINARY, "--config", deployment.config, "backup", "--to", archive], check=True,
                   env=deployment.env, stdout=subprocess.DEVNULL)
    backup_s = time.monotonic() - started
    override = os.path.join(deployment.dir, "restored.json")
    with open(override, "w") as f:
        json.dump({"state_dir": os.path.join(deployment.dir, "restored")}, f)
    started = time.monotonic()
    subprocess.run([BINARY, "--config", deployment.config, "--override", override, "restore", "--from", archive],
                   check=True, env=deployment.env, stdout=subprocess.DEVNULL)
    return {"backup_s": backup_s, "archive_bytes": os.path.getsize(archive), "restore_s": time.monotonic() - started}


def fresh_bots_in_a_shared_room(work, synapse, person, count, runs):
    """`runs` fresh deployments of `count` bots (setup, start, the bots join one shared room, 3 s to settle),
    each measured and stopped: the memory of the run with the median VmRSS, with every run's VmRSS under
    "runs", the first run's seconds from exec to READY=1, and a backup of the first run taken while it runs
    (then restored)."""
    measured, ready, backup = [], None, None
    for _ in range(runs):
        many = Deployment(work, synapse, count)
        started = many.start()
        ready = started if ready is None else ready
        one_shared_room(person, many.users)
        measured.append(dict(memory_kib(many.proc.pid), **memory_metrics(many.api_port)))
        if backup is None:
            backup = backup_and_restore(many)
        many.stop()
    median = sorted(measured, key=lambda m: m["VmRSS"])[len(measured) // 2]
    return dict(median, runs=[m["VmRSS"] for m in measured]), ready, backup


def memory_per_bot_beyond(results, n, many):
    """What each bot beyond the first `n` costs, in KiB: (RSS with `many` bots - RSS with `n`) / (`many` - `n`),
    from `results`' rss_kib_* figures."""
    return (results[f"rss_kib_{many}_bots"] - results[f"rss_kib_{n}_bots"]) / (many - n)


def one_bot_in_a_room(work, synapse):
    """A running deployment of one `ping` bot, a person, and a room they share."""
    one = Deployment(work, synapse, 1)
    bot = one.users[0]
    person = Person(synapse)
    one.start()
    room = person.api.create_room([bot])
    person.api.wait_for_members(room, [bot])
    return one, bot, person, room


def a_room_each(person, bots):
    """A room of `person`'s with each of `bots`, once the bot joined: [(room, bot)]."""
    rooms = [(person.api.create_room([b]), b) for b in bots]
    for room, bot in rooms:
        person.api.wait_for_members(room, [bot])
    return rooms


def one_shared_room(person, bots):
    """A room of `person`'s with all `bots`, once they joined, and 3 s for the bots to settle (memory phases)."""
    shared = person.api.create_room(bots)
    person.api.wait_for_members(shared, bots, timeout=120)
    time.sleep(3)
    return shared


def maubot_phases(work, synapse, args):
    """The phases the comparison runs against Python maubot (scripts/bench_maubot.py), measured with the same
    functions as the daemon's own."""
    from bench_maubot import MaubotDeployment
    out = {}
    one = MaubotDeployment(work, synapse, 1, free_port())
    bot = one.users[0]
    person = Person(synapse)
    room = person.api.create_room([bot])
    person.api.wait_for_members(room, [bot])
    one.stop()
    out["ready_s"] = one.start()
    time.sleep(3)
    out["rss_kib_1_bot"] = memory_kib(one.proc.pid)["VmRSS"]
    sequential_round_trips(person, room, bot, 5)
    out.update(sequential_phase(synapse, person, room, bot, one.proc.pid, args.pings))
    out["load_1_bot"] = concurrent_load(synapse, person, [(room, bot)], args.senders, args.load_pings)
    one.stop()
    three = MaubotDeployment(work, synapse, 3, free_port())
    rooms = a_room_each(person, three.users)
    out["load_3_bots"] = concurrent_load(synapse, person, rooms, args.senders, args.load_pings)
    three.stop()
    many = MaubotDeployment(work, synapse, args.instances, free_port())
    one_shared_room(person, many.users)
    out[f"rss_kib_{args.instances}_bots"] = memory_kib(many.proc.pid)["VmRSS"]
    many.stop()
    if args.scale:
        scale = MaubotDeployment(work, synapse, args.scale, free_port())
        a_room_each(person, scale.users)
        time.sleep(3)
        out[f"rss_kib_{args.scale}_bots"] = memory_kib(scale.proc.pid)["VmRSS"]
        out["marginal_kib_per_bot"] = memory_per_bot_beyond(out, args.instances, args.scale)
        scale.stop()
    return out


def ratio_text(theirs, ours, higher_is_better):
    """How many times better `ours` is than `theirs`, as "1.05x"; "-" when either is zero."""
    if not theirs or not ours:
        return "-"
    return f"{(ours / theirs if higher_is_better else theirs / ours):.2f}x"


def print_side_by_side(header, rows):
    """Prints `header` and `rows` (tuples of strings: a measure, then figures) in columns as wide as their widest
    cell, the measure left-aligned and the figures right-aligned."""
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)))


def comparison_rows(ours, theirs, n, senders, scale):
    """(measure, maubot, this daemon, ratio maubot/ours where larger is better for us)."""
    def pick(results, path):
        value = results
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value
    specs = [
        ("RSS, 1 bot (MiB)", ["rss_kib_1_bot"], 1 / 1024, False),
        (f"RSS, {n} bots (MiB)", [f"rss_kib_{n}_bots"], 1 / 1024, False),
        (f"RSS, {scale} bots (MiB)", [f"rss_kib_{scale}_bots"], 1 / 1024, False),
        (f"memory per bot beyond {n} (MiB)", ["marginal_kib_per_bot"], 1 / 1024, False),
        ("sequential round trip median (ms)", ["round_trip_ms_median"], 1, False),
        ("bot turnaround median (ms)", ["turnaround_ms_median"], 1, False),
        ("bot CPU per pong (ms)", ["cpu_ms_per_pong"], 1, False),
        (f"{senders} senders, 1 bot: pongs/s", ["load_1_bot", "pongs_per_s"], 1, True),
        (f"{senders} senders, 1 bot: round trip median (ms)", ["load_1_bot", "round_trip_ms_median"], 1, False),
        (f"{senders} senders, 3 bots: pongs/s", ["load_3_bots", "pongs_per_s"], 1, True),
        (f"{senders} senders, 3 bots: round trip median (ms)", ["load_3_bots", "round_trip_ms_median"], 1, False),
    ]
    rows = []
    for label, path, scale, higher_is_better in specs:
        a, b = pick(theirs, path), pick(ours, path)
        if a is None or b is None:
            continue
        a, b = a * scale, b * scale
        rows.append((label, f"{a:.1f}", f"{b:.1f}", ratio_text(a, b, higher_is_better)))
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--pings", type=int, default=50)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--senders", type=int, default=8, help="clients sending at once in the load phases")
    parser.add_argument("--load-pings", type=int, default=200, help="pings the senders send together per phase")
    parser.add_argument("--stall-pings", type=int, default=100,
                        help="pings sent while the daemon is stopped with SIGSTOP")
    parser.add_argument("--starts", type=int, default=5, help="cold starts to take READY/first-pong medians over")
    parser.add_argument("--memory-runs", type=int, default=3,
                        help="fresh N-bot deployments to take the RSS median over")
    parser.add_argument("--scale", type=int, default=100,
                        help="bots (a room each) for the scale phase: READY and marginal memory per bot; 0 skips it")
    parser.add_argument("--json", default=os.path.join(ROOT, "target", "bench", "results.json"))
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--compare-maubot", action="store_true",
                        help="run the same phases against Python maubot 0.6.0 (installed from PyPI) in the same run")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) for inspection")
    args = parser.parse_args()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

    work = tempfile.mkdtemp(prefix="maubot-bench-")
    synapse = Synapse(work)
    results = {}
    try:
        # One bot: start-up, round trip, burst.
        one, bot, person, room = one_bot_in_a_room(work, synapse)
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

        results.update(sequential_phase(synapse, person, room, bot, one.proc.pid, args.pings))

        # The burst is judged on the room's history (server timestamps), not on what one client's sync shows.
        first_sent = time.monotonic()
        burst = [person.api.send_text(room, "!ping") for _ in range(args.burst)]
        sent_all = time.monotonic()
        judged = history_figures(person.api, {room: burst}, {room: bot})
        results["burst_pings"] = args.burst
        results["burst_send_s"] = sent_all - first_sent
        results["burst_pongs_per_s"] = judged["pongs_per_s"]
        results["burst_lost"] = judged["lost"]

        # Several senders at once, one bot in one room.
        results["load_1_bot"] = concurrent_load(synapse, person, [(room, bot)], args.senders, args.load_pings)

        # Exactly once when the daemon stalls and when it is killed in the middle of a burst.
        results["stall"] = stalled(one, person, room, bot, args.stall_pings)
        results["crash"] = crashed(one, person, room, bot, args.burst)
        one.stop()

        # Several senders at once, round-robin over three bots in three rooms.
        three = Deployment(work, synapse, 3)
        three.start()
        rooms = a_room_each(person, three.users)
        results["load_3_bots"] = concurrent_load(synapse, person, rooms, args.senders, args.load_pings)
        three.stop()

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

        # N bots in one shared room: RSS as the median over fresh deployments.
        memory, ready, backup = fresh_bots_in_a_shared_room(work, synapse, person, args.instances, args.memory_runs)
        results[f"ready_s_{args.instances}_bots"] = ready
        results[f"backup_{args.instances}_bots"] = backup
        results[f"rss_kib_{args.instances}_bots"] = memory["VmRSS"]
        results[f"rss_kib_{args.instances}_bots_runs"] = memory.pop("runs")
        results[f"memory_kib_{args.instances}_bots"] = memory

        # Scale: many bots, a room each, measured as the N bots were (3 s after joining); what each bot beyond
        # N costs; READY after a restart, with every bot's room in its store.
        if args.scale:
            scale = Deployment(work, synapse, args.scale)
            scale.start()
            a_room_each(person, scale.users)
            time.sleep(3)
            memory = dict(memory_kib(scale.proc.pid), **memory_metrics(scale.api_port))
            results[f"memory_kib_{args.scale}_bots"] = memory
            results[f"rss_kib_{args.scale}_bots"] = memory["VmRSS"]
            results["marginal_kib_per_bot"] = memory_per_bot_beyond(results, args.instances, args.scale)
            scale.stop()
            results[f"ready_s_{args.scale}_bots"] = scale.start()
            scale.stop()
        if args.compare_maubot:
            results["maubot"] = maubot_phases(work, synapse, args)
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
        (f"RSS, {n} bots (shared room), median of {args.memory_runs}", mib(results[f"memory_kib_{n}_bots"])
         + " runs: " + ", ".join(f"{r / 1024:.1f}" for r in results[f"rss_kib_{n}_bots_runs"])),
        ("exec -> READY=1, 1 bot (median)", f"{results['ready_s_median'] * 1000:.0f} ms"),
        (f"exec -> READY=1, {n} bots", f"{results[f'ready_s_{n}_bots'] * 1000:.0f} ms"),
        (f"backup of {n} running bots: time, archive; restore", "{:.0f} ms, {:.1f} MiB; {:.0f} ms".format(
            results[f"backup_{n}_bots"]["backup_s"] * 1000, results[f"backup_{n}_bots"]["archive_bytes"] / 2**20,
            results[f"backup_{n}_bots"]["restore_s"] * 1000)),
        ("exec -> first pong (median)", f"{results['first_pong_s_median'] * 1000:.0f} ms"
         if results["first_pong_s_median"] is not None else "none"),
        (f"round trip, {args.pings} sequential pings: median", f"{results['round_trip_ms_median']:.0f} ms"),
        ("round trip: p95", f"{results['round_trip_ms_p95']:.0f} ms"),
        ("round trip through exec (example program)", f"median {results['exec_round_trip_ms_median']:.0f} ms, "
                                                      f"p95 {results['exec_round_trip_ms_p95']:.0f} ms"),
        (f"burst of {args.burst}: pongs per second", f"{results['burst_pongs_per_s']:.1f}"),
        ("burst: lost replies", f"{results['burst_lost']}"),
        (f"{results['stall']['pings']} pings sent during a SIGSTOP, then SIGCONT",
         f"{results['stall']['lost']} lost, {results['stall']['duplicated']} duplicated, "
         f"round trip median {results['stall']['round_trip_ms_median'] or 0:.0f} ms"),
        (f"burst of {results['crash']['pings']}, SIGKILL half-way, restarted",
         f"{results['crash']['lost']} lost, {results['crash']['duplicated']} duplicated"),
        ("bot CPU per pong (sequential)", f"{results['cpu_ms_per_pong']:.1f} ms"),
        ("bot turnaround (Synapse access log): median", f"{results['turnaround_ms_median']:.1f} ms"
         if results["turnaround_ms_median"] is not None else "none"),
    ]
    if args.scale:
        rows += [
            (f"RSS, {args.scale} bots (a room each)", mib(results[f"memory_kib_{args.scale}_bots"])),
            (f"exec -> READY=1, {args.scale} bots (restart)", f"{results[f'ready_s_{args.scale}_bots'] * 1000:.0f} ms"),
            (f"memory per bot beyond {n} (RSS {args.scale} - RSS {n}) / {args.scale - n}",
             f"{results['marginal_kib_per_bot'] / 1024:.2f} MiB"),
        ]
    for key, label in (("load_1_bot", "1 bot, 1 room"), ("load_3_bots", "3 bots, 3 rooms")):
        load = results[key]
        rows.append((f"{args.senders} senders, {load['pings']} pings, {label}",
                     f"{load['pongs_per_s']:.1f} pongs/s, round trip median {load['round_trip_ms_median']:.0f} ms, "
                     f"p95 {load['round_trip_ms_p95']:.0f} ms, {load['lost']} lost, {load['duplicated']} duplicated"))
    width = max(len(r[0]) for r in rows)
    print()
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    if "maubot" in results:
        compared = comparison_rows(results, results["maubot"], n, args.senders, args.scale)
        print("\nSide by side, same Synapse, same run (ratio: how many times better this daemon is; "
              "maubot without E2EE, this daemon with):")
        print_side_by_side(("measure", "maubot", "this", "ratio"), compared)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
