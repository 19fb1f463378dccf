"""A person for the NixOS VM tests: logs in with a password, opens (or reuses) a room with the bots, sends `!ping`
and waits for every bot's `pong` reply. Standard library only, so that it runs from pkgs.writers.

Usage: ping-client BASE_URL USER PASSWORD BOT_ID [BOT_ID...] [--room-file FILE]
Built with pkgs.writers.writePython3Bin, which adds the interpreter line and runs flake8 over the result.
The room id is kept in FILE (created on first use) so that later calls ping in the same room.
"""
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

args = [a for a in sys.argv[1:]]
room_file = None
if "--room-file" in args:
    i = args.index("--room-file")
    room_file = args[i + 1]
    del args[i:i + 2]
base, user, password, bots = args[0].rstrip("/"), args[1], args[2], args[3:]
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


token = call("POST", "/_matrix/client/v3/login", {
    "type": "m.login.password",
    "identifier": {"type": "m.id.user", "user": user},
    "password": password,
})["access_token"]

room = None
if room_file and os.path.exists(room_file):
    room = open(room_file).read().strip()
else:
    room = call("POST", "/_matrix/client/v3/createRoom", {"invite": bots, "name": "maubot test"})["room_id"]
    if room_file:
        with open(room_file, "w") as f:
            f.write(room)
room_path = urllib.parse.quote(room)

deadline = time.time() + 90
joined = []
while time.time() < deadline:
    joined = call("GET", f"/_matrix/client/v3/rooms/{room_path}/joined_members")["joined"]
    if all(bot in joined for bot in bots):
        break
    time.sleep(0.5)
else:
    raise SystemExit(f"bots did not join {room} within 90 s: {sorted(joined)}")

ping = call("PUT", f"/_matrix/client/v3/rooms/{room_path}/send/m.room.message/{secrets.token_hex(8)}",
            {"msgtype": "m.text", "body": "!ping"})["event_id"]
answered = {}
deadline = time.time() + 90
while time.time() < deadline and len(answered) < len(bots):
    for event in call("GET", f"/_matrix/client/v3/rooms/{room_path}/messages?dir=b&limit=50")["chunk"]:
        content = event.get("content", {})
        reply_to = content.get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id")
        if event.get("sender") in bots and reply_to == ping:
            answered[event["sender"]] = content.get("body", "")
    time.sleep(0.5)
for bot in bots:
    if bot not in answered:
        raise SystemExit(f"no pong from {bot} within 90 s")
    print(f"{bot}: {answered[bot]}")
print(f"room: {room}")
