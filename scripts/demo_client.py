#!/usr/bin/env python3
"""The person in the demo: registers on the local Synapse, opens a room with the bot, sends `!ping` and prints
the bot's `pong`. Standard library only.

Usage: demo_client.py HOMESERVER_URL SHARED_SECRET BOT_USER_ID
"""
import hashlib
import hmac
import json
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

base, shared_secret, bot = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
token = None


def call(method, path, body=None):
    request = urllib.request.Request(base + path, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(request, data, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        raise SystemExit(f"{method} {path} failed: {error.code} {error.read().decode()}")


# Register a person with Synapse's shared-secret admin API.
localpart = "demo-person-" + secrets.token_hex(3)
password = secrets.token_hex(12)
nonce = call("GET", "/_synapse/admin/v1/register")["nonce"]
mac = hmac.new(shared_secret.encode(), b"\0".join([nonce.encode(), localpart.encode(), password.encode(), b"notadmin"]), hashlib.sha1)
token = call("POST", "/_synapse/admin/v1/register",
             {"nonce": nonce, "username": localpart, "password": password, "admin": False, "mac": mac.hexdigest()})["access_token"]
print(f"person: registered @{localpart}")

room = call("POST", "/_matrix/client/v3/createRoom", {"invite": [bot], "name": "maubot demo"})["room_id"]
print(f"person: created {room} and invited {bot}")
room_path = urllib.parse.quote(room)

deadline = time.time() + 60
while True:
    members = call("GET", f"/_matrix/client/v3/rooms/{room_path}/joined_members")["joined"]
    if bot in members:
        break
    if time.time() > deadline:
        raise SystemExit("the bot did not join within 60 s")
    time.sleep(0.2)
print(f"person: {bot} joined")

sent_at = time.time()
ping = call("PUT", f"/_matrix/client/v3/rooms/{room_path}/send/m.room.message/{secrets.token_hex(8)}",
            {"msgtype": "m.text", "body": "!ping"})["event_id"]
print("person: sent !ping")

deadline = time.time() + 60
while time.time() < deadline:
    messages = call("GET", f"/_matrix/client/v3/rooms/{room_path}/messages?dir=b&limit=20")["chunk"]
    for event in messages:
        content = event.get("content", {})
        reply_to = content.get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id")
        if event.get("sender") == bot and reply_to == ping:
            print(f"{bot}: {content['body']}   (round trip {1000 * (time.time() - sent_at):.0f} ms)")
            sys.exit(0)
    time.sleep(0.2)
raise SystemExit("no pong within 60 s")
