#!/usr/bin/env python3
"""Benchmark of the `guard` plugin: a policy of --users users (default 2,000) across --rooms rooms (default 10,
each user in one room) reconciled against a local Synapse, whose rate limits are relaxed as for every benchmark
here (scripts/synapse-config.py: invites, joins and registrations at 1,000/s), which it says in its output.

Passes measured, each from the guard's own log line (`guard pass finished ... requests=N seconds=S`):
1. the first pass, which invites everyone (one request per invite, one members call per room);
2. a pass with nothing to do (one members call per room, nothing else);
3. after a tenth of the users declined their invite and the policy file dropped another tenth: the declined are
   left alone (their choice) and the dropped ones' invites withdrawn (`kick_unlisted`).

Usage: python3 scripts/bench_guard.py [--users 2000] [--rooms 10] [--json PATH] [--no-build]
It is not a test and asserts nothing beyond the passes finishing.
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bench import BINARY, SERVER_NAME, Synapse, free_port  # noqa: E402
from matrixlib import Api  # noqa: E402

PASS_LINE = re.compile(r"guard pass finished.*?pass=(\d+) trigger=(\S+).*?planned=(\d+) done=(\d+) skipped=(\d+) "
                       r"failed=(\d+) requests=(\d+) seconds=([\d.e-]+)")


def register_users(admin, count):
    """Creates `count` accounts through Synapse's admin API (no password: nothing to hash)."""
    users = [f"@member{i}-{secrets.token_hex(2)}:{SERVER_NAME}" for i in range(count)]

    def create(user):
        admin.call("PUT", f"/_synapse/admin/v2/users/{urllib.parse.quote(user)}", {"displayname": user[1:9]})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(create, users))
    return users


def write_policy(path, rooms, members, owner, dropped=()):
    policy = {"rooms": {room: {"users": [u for u in users if u not in dropped], "allow": [owner],
                               "kick_unlisted": True}
                        for room, users in zip(rooms, members)}}
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump(policy, f)
    os.replace(temporary, path)


def wait_pass(log_path, after, timeout=900):
    """The first pass line after `after` passes: a dict of its figures."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(log_path) as f:
            passes = [m for m in map(PASS_LINE.search, f) if m]
        if len(passes) > after:
            m = passes[after]
            return {"pass": int(m[1]), "trigger": m[2], "planned": int(m[3]), "done": int(m[4]),
                    "skipped": int(m[5]), "failed": int(m[6]), "requests": int(m[7]), "seconds": float(m[8])}
        time.sleep(0.5)
    raise SystemExit(f"no guard pass {after + 1} within {timeout} s; see {log_path}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--json", default=os.path.join(ROOT, "target", "bench", "guard.json"))
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "maubot"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="maubot-bench-guard-")
    synapse = Synapse(work)
    try:
        admin = Api(synapse.url).register_with_secret(synapse.secret, "owner-" + secrets.token_hex(3), "pw", admin=True)
        owner = admin.user_id()
        started = time.monotonic()
        users = register_users(admin, args.users)
        print(f"registered {len(users)} users in {time.monotonic() - started:.1f} s")

        state = os.path.join(work, "bots")
        os.makedirs(os.path.join(state, "credentials"))
        with open(os.path.join(state, "credentials", "registration-shared-secret"), "w") as f:
            f.write(synapse.secret)
        guard = f"@guard-{secrets.token_hex(2)}:{SERVER_NAME}"
        policy_path = os.path.join(state, "policy.json")
        config = os.path.join(state, "config.yaml")
        with open(config, "w") as f:
            f.write("\n".join([
                f"state_dir: {state}/state",
                f"server: {{port: {free_port()}}}",
                "logging: {level: 'warn,maubot=info'}",
                "homeservers:",
                f"  local: {{url: '{synapse.url}', registration_shared_secret: {{credential: registration-shared-secret}}}}",
                "instances:",
                f"  guard: {{type: guard, user: '{guard}', config: {{policy_file: '{policy_path}', "
                f"interval_seconds: 3600, allow_invites_from: ['{owner}']}}}}",
            ]) + "\n")
        env = dict(os.environ, CREDENTIALS_DIRECTORY=os.path.join(state, "credentials"))
        env.pop("RUST_LOG", None)
        subprocess.run([BINARY, "--config", config, "setup"], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rooms = [admin.create_room([guard], name=f"guarded {i}") for i in range(args.rooms)]
        for room in rooms:
            path = f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/state/m.room.power_levels/"
            levels = admin.call("GET", path)
            # From room version 12 the creator has unlimited power and must not be listed.
            levels["users"] = dict(levels.get("users", {}), **{guard: 100})
            admin.call("PUT", path, levels)
        per_room = [users[i::args.rooms] for i in range(args.rooms)]
        write_policy(policy_path, rooms, per_room, owner)

        log_path = os.path.join(state, "run.log")
        daemon = subprocess.Popen([BINARY, "--config", config, "run"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=open(log_path, "w"))
        results = {}
        try:
            # The first pass may run before the bot joined its rooms: the pass that invites everyone is the one
            # with the most changes.
            seen = 0
            while True:
                figures = wait_pass(log_path, seen)
                seen += 1
                if figures["done"] >= args.users:
                    results["invite_everyone"] = figures
                    break
            # Nothing to do: started by a policy file rewrite with the same content.
            write_policy(policy_path, rooms, per_room, owner)
            results["nothing_to_do"] = wait_pass(log_path, seen)
            seen += 1
            # A tenth decline; another tenth is dropped from the policy.
            tenth = max(1, args.users // 10)
            declined, dropped = users[:tenth], set(users[tenth:2 * tenth])
            synapse_admin = admin

            def decline(user):
                token = synapse_admin.call("POST", f"/_synapse/admin/v1/users/{urllib.parse.quote(user)}/login",
                                           {})["access_token"]
                person = Api(synapse.url, token)
                room = rooms[users.index(user) % args.rooms]
                person.call("POST", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/leave", {})

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(decline, declined))
            # Let the membership passes those leaves start settle, then measure the policy change alone.
            time.sleep(5)
            with open(log_path) as f:
                seen = sum(1 for line in f if PASS_LINE.search(line))
            write_policy(policy_path, rooms, per_room, owner, dropped)
            while True:
                figures = wait_pass(log_path, seen)
                seen += 1
                if figures["trigger"] == "policy_file":
                    results["after_declines_and_drops"] = figures
                    break
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
    finally:
        synapse.stop()

    report = {"date": datetime.date.today().isoformat(), "machine": platform.machine(), "cpus": os.cpu_count(),
              "users": args.users, "rooms": args.rooms,
              "synapse_rate_limits": "relaxed (scripts/synapse-config.py)", "passes": results}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"guard: {args.users} users across {args.rooms} rooms; Synapse's rate limits relaxed")
    print(f"{'pass':28} {'planned':>8} {'done':>6} {'skipped':>8} {'requests':>9} {'seconds':>8}")
    for name, p in results.items():
        print(f"{name:28} {p['planned']:8} {p['done']:6} {p['skipped']:8} {p['requests']:9} {p['seconds']:8.2f}")


if __name__ == "__main__":
    main()
