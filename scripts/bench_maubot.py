"""Python maubot 0.6.0 as the benchmark's peer: installed from PyPI into its own venv, driven through its
management API (log in, upload a minimal `!ping` plugin, register each bot through the homeserver's shared
secret, create an instance per bot), on the same Synapse. Without python-olm, so without E2EE (maubot's default
install); the Rust daemon keeps E2EE on in every run."""
import io
import json
import os
import secrets
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zipfile

MAUBOT_VERSION = "0.6.0"
CACHE = os.environ.get("MAUBOT_CACHE_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "maubot-dev")

PLUGIN_META = """maubot: 0.1.0
id: test.bench.ping
version: 1.0.0
license: MIT
modules: [benchping]
main_class: BenchPing
"""

PLUGIN_CODE = """from maubot import Plugin, MessageEvent
from maubot.handlers import command


class BenchPing(Plugin):
    @command.new("ping")
    async def ping(self, evt: MessageEvent) -> None:
        await evt.reply("pong")
"""


def install():
    """The venv's python, installing maubot the first time (a marker written last: an interrupted install is
    redone)."""
    venv = os.path.join(CACHE, f"maubot-{MAUBOT_VERSION}")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(os.path.join(venv, ".installed")):
        subprocess.run(["python3", "-m", "venv", venv], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", f"maubot=={MAUBOT_VERSION}"], check=True)
        open(os.path.join(venv, ".installed"), "w").close()
    return python


def plugin_archive():
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("maubot.yaml", PLUGIN_META)
        archive.writestr("benchping.py", PLUGIN_CODE)
    return data.getvalue()


class MaubotDeployment:
    """`count` bots in one maubot process, each a client with an instance of the `!ping` plugin; its management
    API on `port`."""

    def __init__(self, work, synapse, count, port):
        self.python = install()
        self.dir = tempfile.mkdtemp(prefix=f"maubot-{count}-", dir=work)
        os.makedirs(os.path.join(self.dir, "plugins"))
        self.port = port
        self.base = f"http://127.0.0.1:{self.port}/_matrix/maubot/v1"
        self.password = secrets.token_hex(8)
        config = {
            "database": f"sqlite:{self.dir}/maubot.db",
            "crypto_database": "default",
            "plugin_directories": {"upload": f"{self.dir}/plugins", "load": [f"{self.dir}/plugins"],
                                   "trash": "delete"},
            "plugin_databases": {"sqlite": f"{self.dir}/plugins", "postgres": None},
            "server": {"hostname": "127.0.0.1", "port": self.port, "public_url": f"http://127.0.0.1:{self.port}",
                       "unshared_secret": "generate"},
            "homeservers": {"local": {"url": synapse.url, "secret": synapse.secret}},
            "admins": {"bench": self.password},
            "api_features": {"login": True, "plugin": True, "plugin_upload": True, "instance": True,
                             "client": True, "client_auth": True},
            "logging": {"version": 1, "root": {"level": "WARNING", "handlers": ["file"]},
                        "handlers": {"file": {"class": "logging.FileHandler", "filename": f"{self.dir}/maubot.log"}}},
        }
        self.config = os.path.join(self.dir, "config.yaml")
        with open(self.config, "w") as f:
            json.dump(config, f)  # JSON is YAML
        self.proc = None
        self.token = None
        self.users = []
        self.start()
        self.token = self.call("POST", "/auth/login", {"username": "bench", "password": self.password})["token"]
        self.call("POST", "/plugins/upload", plugin_archive(), raw=True)
        for i in range(count):
            localpart = f"maubot{i}-{secrets.token_hex(2)}"
            client = self.call("POST", "/client/auth/local/register?update_client=true",
                               {"username": localpart, "password": secrets.token_hex(8)})
            user = client["id"]
            instance = {"primary_user": user, "type": "test.bench.ping", "enabled": True, "started": True}
            self.call("PUT", f"/instance/bench{i}", instance)
            self.users.append(user)

    def call(self, method, path, body=None, raw=False):
        data = body if raw else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/zip" if raw else "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"maubot {method} {path}: {error.code} {error.read().decode()}") from None

    def start(self):
        """Starts maubot; returns seconds from exec until its management API answers and every client synced
        once (maubot has no readiness notification)."""
        started = time.monotonic()
        self.proc = subprocess.Popen([self.python, "-m", "maubot", "-c", self.config], cwd=self.dir,
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "run.log"), "a"))
        self.started = started
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"maubot exited; see {self.dir}/run.log and maubot.log")
            try:
                urllib.request.urlopen(f"{self.base}/version", timeout=2)
                break
            except Exception:
                time.sleep(0.05)
        if self.token:
            while time.monotonic() < deadline:
                clients = self.call("GET", "/clients")
                if all(c.get("started") and c.get("sync_ok", True) for c in clients):
                    break
                time.sleep(0.05)
        return time.monotonic() - started

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
