#!/usr/bin/env python3
"""An echo bot for maubot's `exec` plugin type, with the standard library only.

The host runs this program and talks to it over stdin and stdout, one JSON
object per line (docs/exec.md): it writes `hello` once, then one `message`
at a time; the program answers `ready` once, and for each message any number
of actions followed by `done`. stderr goes to the bot's log.

Commands: `!echo TEXT` replies TEXT, `!ping` replies pong, `!react` reacts,
`!later SECONDS TEXT` replies TEXT after SECONDS (a job: the host keeps it
across restarts and hands it back as `run_job`; the bot answers it with
`job_done` from a thread while it goes on answering messages).
Settings: `prefix` (default `!`), `announce_room` (a room ID that gets a
message when the bot starts).
"""
import json
import sys
import threading
import time

# Lines from the main loop and from job threads must not interleave.
OUTPUT = threading.Lock()
# The longest `!later`: below the host's default job_timeout_secs (3600).
MAX_LATER_SECS = 3000


def say(message):
    with OUTPUT:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def later(job):
    """Waits until the job is due, then replies; after a restart it waits
    only for what is left."""
    payload = job["payload"]
    time.sleep(max(0.0, payload["at"] - time.time()))
    reply = {"type": "reply", "to": job["event_id"], "body": payload["text"]}
    say({"type": "job_done", "key": job["key"], "actions": [reply]})


def handle(message, prefix):
    word, _, rest = message["body"].strip().partition(" ")
    if word == prefix + "echo" and rest:
        say({"type": "reply", "to": message["id"], "body": rest})
    elif word == prefix + "ping":
        took = message["age_ms"]
        say({"type": "reply", "to": message["id"],
             "body": f"pong (took {took} ms)", "notice": True})
    elif word == prefix + "react":
        say({"type": "react", "to": message["id"], "reaction": "👍"})
    elif word == prefix + "later":
        seconds, _, text = rest.partition(" ")
        if not seconds.isdigit() or int(seconds) > MAX_LATER_SECS or not text:
            say({"type": "reply", "to": message["id"], "notice": True,
                 "body": f"usage: {prefix}later SECONDS TEXT "
                         f"(at most {MAX_LATER_SECS} s)"})
            return
        # The event id makes the key: the host keeps one job per key.
        due = time.time() + int(seconds)
        say({"type": "job", "key": "later " + message["id"],
             "payload": {"at": due, "text": text}})


def main():
    hello = json.loads(sys.stdin.readline())
    settings = hello.get("config", {})
    prefix = settings.get("prefix", "!")
    # It only answers: it never invites, kicks or changes a room, and saying so
    # spares the host a sync per answer (its own answers are not sent back).
    say({"type": "ready", "changes_rooms": False})
    print(f"echo bot {hello['instance']} started as {hello['user_id']}",
          file=sys.stderr, flush=True)
    announce = settings.get("announce_room")
    if announce:
        # Outside an event a send needs a key: the host sends each key once.
        key = f"up-{int(time.time())}"
        say({"type": "send", "room_id": announce,
             "body": f"{hello['instance']} is up", "key": key})
    for line in sys.stdin:
        message = json.loads(line)
        if message["type"] == "shutdown":
            break
        if message["type"] == "message":
            handle(message, prefix)
            say({"type": "done", "to": message["id"]})
        elif message["type"] == "run_job":
            key, attempt = message["key"], message["attempt"]
            print(f"job {key} started, attempt {attempt}",
                  file=sys.stderr, flush=True)
            job = threading.Thread(target=later, args=(message,), daemon=True)
            job.start()


if __name__ == "__main__":
    main()
