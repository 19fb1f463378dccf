#!/usr/bin/env python3
"""Load, side by side with Python maubot 0.6.0, repeated and alternated: one run's spread does not decide.

The load phases of bench.py (--senders clients sending --load-pings `!ping`s at once, against 1 bot in 1 room and
against 3 bots in 3 rooms), run --rounds times against this daemon and against maubot on the same Synapse, the
order swapped every round (ours first, then theirs first), all four deployments kept running throughout. Besides
pongs/s and the round-trip medians it measures, per pong, what the load costs Synapse and the bot: Synapse's CPU,
the bot's CPU, and the requests the bot made (from Synapse's access log: `/sync`s, sends, anything else); and
where a round trip goes: the ping waiting for its bot's next `/sync`, the bot's own turnaround, the reply's PUT.
Prints each figure as the median over the rounds with the range, for both, and the ratio of the medians.
With --against-binary PATH or --against-env KEY=VALUE (repeatable) the other side is not maubot but this daemon
again, as that build or with that environment: an A/B of a change, judged the same way.

Usage: python3 scripts/load-ab.py [--rounds 5] [--senders 8] [--load-pings 200] [--no-build] [--json PATH]
                                  [--against-binary PATH] [--against-env KEY=VALUE]...
Run it on an otherwise idle machine; it is not a test and asserts nothing.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import (ROOT, Deployment, Person, Synapse, a_room_each, bot_requests, concurrent_load,  # noqa: E402
                   cpu_seconds, free_port, print_side_by_side, ratio_text, turnarounds)


def where_the_round_trip_goes(requests, pings_accepted):
    """Medians (ms) of the parts of a round trip under load, from the access log and the pings' timestamps:
    - `to_bot`: from the homeserver accepting a ping to the end of its bot's first `/sync` after that (the ping
      waits for the bot's next long poll, and for Synapse to answer it);
    - `in_bot`: from the end of a `/sync` to the start of a reply's PUT (the latest sync before it): the bot's own
      turnaround;
    - `reply`: a reply's PUT, start to end, in Synapse;
    - `between_polls`: from the end of a bot's `/sync` to the start of its next, while no long poll waits."""
    to_bot, in_bot, reply, between = [], [], [], []
    for bot, accepted in pings_accepted:
        ends = [end for _, end in requests[bot]["sync"] if end >= accepted / 1000]
        if ends:
            to_bot.append(1000 * min(ends) - accepted)
    for mine in requests.values():
        syncs = sorted(mine["sync"])
        in_bot += turnarounds(syncs, mine["send"])
        reply += [1000 * (end - start) for start, end in mine["send"]]
        between += [1000 * (b[0] - a[1]) for a, b in zip(syncs, syncs[1:])]
    parts = (("to_bot", to_bot), ("in_bot", in_bot), ("reply", reply), ("between_polls", between))
    return {f"{name}_ms_median": statistics.median(values) if values else None for name, values in parts}


def measured_load(synapse, person, side, args):
    """One load phase against `side` (a dict: pid, targets [(room, bot)]): bench.py's figures plus the CPU
    Synapse and the bot spent per pong and the bot's requests per pong."""
    bots = {bot for _, bot in side["targets"]}
    synapse_before, bot_before, since = cpu_seconds(synapse.proc.pid), cpu_seconds(side["pid"]), time.time()
    figures = concurrent_load(synapse, person, side["targets"], args.senders, args.load_pings)
    until = time.time()
    # history_figures waits 2 s for late duplicates after the last reply: idle time, little CPU.
    pongs = max(1, figures["pings"] - figures["lost"])
    figures["synapse_cpu_ms_per_pong"] = 1000 * (cpu_seconds(synapse.proc.pid) - synapse_before) / pongs
    figures["bot_cpu_ms_per_pong"] = 1000 * (cpu_seconds(side["pid"]) - bot_before) / pongs
    # The access log is written as requests end: give the last ones a moment.
    time.sleep(1)
    requests = bot_requests(synapse.log, bots, since, until)
    for kind in ("sync", "send", "other"):
        count = sum(r[kind] if kind == "other" else len(r[kind]) for r in requests.values())
        figures[f"{kind}_requests_per_pong"] = count / pongs
    figures.update(where_the_round_trip_goes(requests, figures.pop("pings_accepted")))
    return figures


FIGURES = [
    ("pongs/s", "pongs_per_s", True),
    ("round trip median (ms)", "round_trip_ms_median", False),
    ("round trip p95 (ms)", "round_trip_ms_p95", False),
    ("Synapse CPU per pong (ms)", "synapse_cpu_ms_per_pong", False),
    ("... ping accepted to the end of its bot's next /sync (ms)", "to_bot_ms_median", False),
    ("... end of that /sync to the start of a reply (ms)", "in_bot_ms_median", False),
    ("... a reply's PUT in Synapse (ms)", "reply_ms_median", False),
    ("end of a bot's /sync to the start of its next (ms)", "between_polls_ms_median", False),
    ("bot CPU per pong (ms)", "bot_cpu_ms_per_pong", False),
    ("bot /syncs per pong", "sync_requests_per_pong", False),
    ("bot sends per pong", "send_requests_per_pong", False),
    ("bot other requests per pong", "other_requests_per_pong", False),
]


def summary_rows(rounds, label):
    """(measure, other side's median [range], ours median [range], ratio of medians, larger is better for us)."""
    rows = []
    for name, key, higher_is_better in FIGURES:
        theirs = [r["other"][label][key] for r in rounds if r["other"][label].get(key) is not None]
        ours = [r["ours"][label][key] for r in rounds if r["ours"][label].get(key) is not None]
        if not theirs or not ours:
            continue
        a, b = statistics.median(theirs), statistics.median(ours)
        spread = "{:.1f} [{:.1f}-{:.1f}]"
        rows.append((f"{label}: {name}", spread.format(a, min(theirs), max(theirs)),
                     spread.format(b, min(ours), max(ours)), ratio_text(a, b, higher_is_better)))
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--load-pings", type=int, default=200)
    parser.add_argument("--json", default=os.path.join(ROOT, "target", "bench", "load-ab.json"))
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--against-binary", help="the other side is this daemon built as PATH, not maubot")
    parser.add_argument("--against-env", action="append", default=[], metavar="KEY=VALUE",
                        help="the other side is this daemon with this in its environment, not maubot")
    args = parser.parse_args()
    against_daemon = bool(args.against_binary or args.against_env)
    other_name = "maubot 0.6" if not against_daemon else " ".join(
        ([f"binary {args.against_binary}"] if args.against_binary else []) + args.against_env)
    other_env = dict(pair.split("=", 1) for pair in args.against_env)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    if not against_daemon:
        from bench_maubot import MaubotDeployment

    work = tempfile.mkdtemp(prefix="maubot-load-ab-")
    synapse = Synapse(work)
    running = []
    rounds = []
    try:
        person = Person(synapse)
        sides = {"ours": {}, "other": {}}
        for count, label in ((1, "1 bot"), (3, "3 bots")):
            ours = Deployment(work, synapse, count)
            ours.start()
            running.append(ours)
            sides["ours"][label] = {"pid": ours.proc.pid, "targets": a_room_each(person, ours.users)}
            if against_daemon:
                theirs = Deployment(work, synapse, count, binary=args.against_binary)
                theirs.start(extra_env=other_env)
            else:
                theirs = MaubotDeployment(work, synapse, count, free_port())
            running.append(theirs)
            sides["other"][label] = {"pid": theirs.proc.pid, "targets": a_room_each(person, theirs.users)}
        for n in range(args.rounds):
            order = ["ours", "other"] if n % 2 == 0 else ["other", "ours"]
            results = {"ours": {}, "other": {}}
            for label in ("1 bot", "3 bots"):
                for who in order:
                    results[who][label] = measured_load(synapse, person, sides[who][label], args)
                    figures = results[who][label]
                    name = "this daemon" if who == "ours" else other_name
                    print(f"round {n + 1}, {label}, {name}: {figures['pongs_per_s']:.1f} pongs/s, median "
                          f"{figures['round_trip_ms_median']:.0f} ms, {figures['lost']} lost, "
                          f"{figures['duplicated']} duplicated", flush=True)
            rounds.append(results)
    finally:
        for deployment in running:
            deployment.stop()
        synapse.stop()
        shutil.rmtree(work, ignore_errors=True)

    rows = summary_rows(rounds, "1 bot") + summary_rows(rounds, "3 bots")
    header = ("measure (median over rounds [range])", other_name, "this daemon", "ratio")
    note = "" if against_daemon else " (maubot without E2EE, this daemon with)"
    print(f"\n{args.rounds} rounds, alternated; {args.senders} senders, {args.load_pings} pings per phase; "
          f"ratio: how many times better this daemon is{note}")
    print_side_by_side(header, rows)
    lost = sum(r[who][label]["lost"] + r[who][label]["duplicated"] for r in rounds for who in r for label in r[who])
    print(f"lost or duplicated replies, all phases: {lost}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "other": other_name, "rounds": rounds}, f, indent=2)
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
