#!/usr/bin/env python3
"""An echo bot for maubot's `exec` plugin type, with the standard library only.

The host runs this program and talks to it over stdin and stdout, one JSON
object per line (docs/exec.md): it writes `hello` once, then one `message`
at a time; the program answers `ready` once, and for each message any number
of actions followed by `done`. stderr goes to the bot's log.

Commands: `!echo TEXT` replies TEXT, `!ping` replies pong, `!react` reacts.
Settings: `prefix` (default `!`), `announce_room` (a room ID that gets a
message when the bot starts).
"""
import json
import sys
import time


def say(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


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


def main():
    hello = json.loads(sys.stdin.readline())
    settings = hello.get("config", {})
    prefix = settings.get("prefix", "!")
    say({"type": "ready"})
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


if __name__ == "__main__":
    main()
