"""A few Matrix client-server calls over the standard library, for the demo and the benchmark."""
import hashlib
import hmac
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request


class Api:
    def __init__(self, base, token=None):
        self.base = base.rstrip("/")
        self.token = token

    def call(self, method, path, body=None, timeout=60):
        request = urllib.request.Request(self.base + path, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        data = json.dumps(body).encode() if body is not None else None
        try:
            with urllib.request.urlopen(request, data, timeout=timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"{method} {path} failed: {error.code} {error.read().decode()}") from None

    def register_with_secret(self, shared_secret, localpart, password, admin=False):
        """Synapse's shared-secret admin registration; returns an Api logged in as the new user."""
        nonce = self.call("GET", "/_synapse/admin/v1/register")["nonce"]
        mac = hmac.new(shared_secret.encode(), b"\0".join(
            [nonce.encode(), localpart.encode(), password.encode(), b"admin" if admin else b"notadmin"]), hashlib.sha1)
        response = self.call("POST", "/_synapse/admin/v1/register", {
            "nonce": nonce, "username": localpart, "password": password, "admin": admin, "mac": mac.hexdigest()})
        return Api(self.base, response["access_token"])

    def user_id(self):
        return self.call("GET", "/_matrix/client/v3/account/whoami")["user_id"]

    def create_room(self, invite, name="maubot"):
        return self.call("POST", "/_matrix/client/v3/createRoom", {"invite": list(invite), "name": name})["room_id"]

    def invite(self, room, user):
        self.call("POST", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/invite", {"user_id": user})

    def join(self, room):
        return self.call("POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room)}", {})["room_id"]

    def joined_members(self, room):
        return self.call("GET", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/joined_members")["joined"]

    def wait_for_members(self, room, users, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(u in self.joined_members(room) for u in users):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{users} did not join {room} within {timeout} s")

    def send_text(self, room, body):
        path = f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/m.room.message/{secrets.token_hex(8)}"
        return self.call("PUT", path, {"msgtype": "m.text", "body": body})["event_id"]

    def sync(self, since=None, timeout_ms=0):
        query = {"timeout": str(timeout_ms), "filter": json.dumps({"room": {"timeline": {"limit": 500}}, "presence": {"types": []}})}
        if since:
            query["since"] = since
        return self.call("GET", "/_matrix/client/v3/sync?" + urllib.parse.urlencode(query), timeout=timeout_ms / 1000 + 30)


def room_events(api, room, limit=1000):
    """The room's newest events, oldest first, from /messages."""
    events, token = [], None
    while len(events) < limit:
        query = {"dir": "b", "limit": "500"}
        if token:
            query["from"] = token
        page = api.call("GET", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/messages?"
                        + urllib.parse.urlencode(query))
        events.extend(page.get("chunk", []))
        token = page.get("end")
        if not page.get("chunk") or not token:
            break
    return list(reversed(events))


def replies_in(sync_response, room):
    """(sender, replied-to event id, body, msgtype) of every reply in a room's timeline of a sync response."""
    joined = sync_response.get("rooms", {}).get("join", {}).get(room, {})
    for event in joined.get("timeline", {}).get("events", []):
        content = event.get("content", {})
        target = content.get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id")
        if target:
            yield event["sender"], target, content.get("body", ""), content.get("msgtype", "")
