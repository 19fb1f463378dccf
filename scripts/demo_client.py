#!/usr/bin/env python3
"""The person in the demo: registers on the local Synapse, opens a room with the bot, sends `!ping` (or TEXT)
and prints the bot's reply with its message type (`pong`, as an `m.notice`).

Usage: demo_client.py HOMESERVER_URL SHARED_SECRET BOT_USER_ID [TEXT]
"""
import os
import secrets
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matrixlib import Api, replies_in  # noqa: E402


def main():
    base, shared_secret, bot = sys.argv[1], sys.argv[2], sys.argv[3]
    text = sys.argv[4] if len(sys.argv) > 4 else "!ping"
    person = Api(base).register_with_secret(shared_secret, "demo-person-" + secrets.token_hex(3), secrets.token_hex(12))
    print(f"person: registered {person.user_id()}")
    room = person.create_room([bot], name="maubot demo")
    print(f"person: created {room} and invited {bot}")
    person.wait_for_members(room, [bot])
    print(f"person: {bot} joined")
    since = person.sync()["next_batch"]
    sent_at = time.time()
    ping = person.send_text(room, text)
    print(f"person: sent {text}")
    deadline = time.time() + 60
    while time.time() < deadline:
        response = person.sync(since, timeout_ms=5000)
        since = response["next_batch"]
        for sender, target, body, msgtype in replies_in(response, room):
            if sender == bot and target == ping:
                print(f"{bot}: {body}   ({msgtype}; round trip {1000 * (time.time() - sent_at):.0f} ms)")
                return
    raise RuntimeError("no reply within 60 s")


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as error:
        raise SystemExit(f"person: {error}")
