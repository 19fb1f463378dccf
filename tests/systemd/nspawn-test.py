#!/usr/bin/env python3
"""The unit the NixOS module renders, under a real systemd (PID 1 in systemd-nspawn), against a real Synapse.

Boots a cached minimal Debian rootfs (scripts/nspawn-rootfs.sh) with --volatile=overlay, installs into it what the
module would (the golden unit, settings and maubot-setup from tests/systemd/golden/, the release binary at the
package path the unit names, the `maubot` system user, secrets where sops-nix puts them), and checks what an
operator would see: exit 78 and no restart without state, `maubot-setup` under the same sandbox, READY and STATUS,
credentials, the watchdog, hardening that is enforced and does not break the daemon, a real `!ping` answered,
journald fields, a `media` bot whose yt-dlp and ffmpeg run under the unit's hardening, a clean stop, and the
unit's `systemd-analyze security` exposure.

Run as root (CI is). Prints `N passed, N failed`.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
from checks import check, failures, summary  # noqa: E402
GOLDEN = os.path.join(HERE, "golden")
BINARY = os.path.join(ROOT, "target", "release", "maubot")
SERVER_NAME = "maubot.test"
BOT = "@pingbot:maubot.test"
# Where the example exec bot is in the container.
EXEC_PROGRAM = "/usr/local/lib/maubot/echo-bot.py"
SECOND_BOT = "@secondbot:maubot.test"
MEDIA_BOT = "@mediabot:maubot.test"
# yt-dlp in the container: the PyPI wheel (pure Python), run by the container's python3 through a wrapper, as
# nixpkgs' wrapper runs pkgs.yt-dlp.
YT_DLP_VERSION = "2026.11.23"
YT_DLP_DIR = "/opt/yt-dlp"
YT_DLP = "/usr/local/bin/yt-dlp"
MAX_EXPOSURE = 1.0


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, **kw)


def read(path):
    with open(path) as f:
        return f.read()


class Container:
    def __init__(self, rootfs, binds, log_path):
        self.log = open(log_path, "w")
        args = ["systemd-nspawn", "-D", rootfs, "-b", "--register=no", "--keep-unit", "--console=read-only",
                "--volatile=overlay"] + [f"--bind-ro={src}:{dst}" for src, dst in binds]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self.leader = None
        deadline = time.time() + 30
        # The container's PID 1 is the child of nspawn that runs systemd (before it execs, the child is nspawn).
        while time.time() < deadline and self.leader is None:
            for child in run(["pgrep", "-P", str(self.proc.pid)]).stdout.split():
                try:
                    if read(f"/proc/{child}/comm").strip() == "systemd":
                        self.leader = int(child)
                except OSError:
                    pass
            time.sleep(0.1)
        if self.leader is None:
            raise SystemExit(f"the container did not start; see {log_path}")
        state = self.sh("systemctl is-system-running --wait", timeout=60).stdout.strip()
        if state not in ("running", "degraded"):
            print(self.sh("systemctl --failed --no-legend").stdout)
        self.root = f"/proc/{self.leader}/root"

    def sh(self, command, timeout=120):
        return run(["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-C", "--", "sh", "-c", command],
                   timeout=timeout)

    def show(self, unit, *props):
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit):
        return self.sh(f"journalctl -u {unit} --no-pager -o cat").stdout

    def stop(self):
        if self.proc.poll() is None:
            self.sh("systemctl poweroff", timeout=30)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def wait_until(predicate, timeout, interval=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_synapse(venv, work, secret, port):
    data = os.path.join(work, "synapse")
    python = os.path.join(venv, "bin", "python")
    subprocess.run([python, os.path.join(ROOT, "scripts", "synapse-config.py"), data, str(port), secret,
                    SERVER_NAME], check=True)
    log = open(os.path.join(data, "stdout.log"), "w")
    proc = subprocess.Popen([python, "-m", "synapse.app.homeserver", "-c", os.path.join(data, "homeserver.yaml")],
                            stdout=log, stderr=subprocess.STDOUT)
    import urllib.request

    def healthy():
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return True
        except Exception:
            return False

    if not wait_until(healthy, 90):
        raise SystemExit(f"Synapse did not start; see {data}/homeserver.log")
    return proc


def main():
    if os.geteuid() != 0:
        raise SystemExit("nspawn-test: needs root (systemd-nspawn)")
    if not os.path.exists(BINARY):
        raise SystemExit(f"nspawn-test: {BINARY} is missing; run `cargo build --release` first")
    rootfs = run(["bash", os.path.join(ROOT, "scripts", "nspawn-rootfs.sh")], check=True).stdout.strip()
    venv = run(["bash", os.path.join(ROOT, "scripts", "install-synapse.sh")], check=True).stdout.strip()
    wheels = yt_dlp_wheel()

    unit_text = read(os.path.join(GOLDEN, "maubot.service"))
    package_path = re.search(r"^ExecStart=(\S+)/bin/maubot ", unit_text, re.M).group(1)

    work = tempfile.mkdtemp(prefix="maubot-nspawn-")
    secret = os.urandom(16).hex()
    port = free_port()
    synapse = start_synapse(venv, work, secret, port)
    container = None
    try:
        binds = [
            (BINARY, f"{package_path}/bin/maubot"),
            (os.path.join(GOLDEN, "maubot.service"), "/etc/systemd/system/maubot.service"),
            (os.path.join(GOLDEN, "maubot-setup"), "/usr/local/bin/maubot-setup"),
            (os.path.join(GOLDEN, "maubot-ctl"), "/usr/local/bin/maubot-ctl"),
            (os.path.join(ROOT, "examples", "echo-bot.py"), EXEC_PROGRAM),
            (wheels, YT_DLP_DIR),
        ]
        container = Container(rootfs, binds, os.path.join(work, "console.log"))
        run_tests(container, venv, secret, port)
    finally:
        if container is not None:
            container.stop()
        synapse.terminate()
        synapse.wait()
        if failures() == 0:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"(logs kept in {work})")

    exposure = run(["systemd-analyze", "security", "--offline=yes", os.path.join(GOLDEN, "maubot.service")])
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", exposure.stdout + exposure.stderr)
    check(f"systemd-analyze security exposure <= {MAX_EXPOSURE}",
          match is not None and float(match.group(1)) <= MAX_EXPOSURE, match.group(0) if match else exposure.stderr)

    return summary()


def yt_dlp_wheel():
    """A directory with yt-dlp's wheel from PyPI (downloaded once, cached)."""
    cache = os.path.join(os.environ.get("MAUBOT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "maubot-dev"), f"yt-dlp-wheel-{YT_DLP_VERSION}")
    if not any(name.endswith(".whl") for name in (os.listdir(cache) if os.path.isdir(cache) else [])):
        os.makedirs(cache, exist_ok=True)
        run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--only-binary", ":all:", "-d", cache, f"yt-dlp=={YT_DLP_VERSION}"], check=True)
    return cache


def serve_media(c):
    """A video made by the container's ffmpeg, served from the host on a free loopback port: (server, url)."""
    c.sh("mkdir -p /srv/media && ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc=duration=2:size=320x240:rate=10 "
         "-f lavfi -i sine=duration=2 -c:v libx264 -pix_fmt yuv420p -c:a aac -shortest /srv/media/clip.mp4", timeout=120)
    media_port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(media_port), "--bind", "127.0.0.1",
                               "--directory", f"{c.root}/srv/media"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return server, f"http://127.0.0.1:{media_port}/clip.mp4"


def write_settings(c, port, extra_instances=None):
    """What the module puts at /etc/maubot/settings.json: the golden settings, the homeserver on `port`."""
    settings = json.loads(read(os.path.join(GOLDEN, "settings.json")))
    settings["homeservers"]["default"]["url"] = f"http://127.0.0.1:{port}"
    settings["instances"].update(extra_instances or {})
    os.makedirs(f"{c.root}/etc/maubot", exist_ok=True)
    with open(f"{c.root}/etc/maubot/settings.json", "w") as f:
        json.dump(settings, f)


def status_text(c):
    return c.show("maubot", "StatusText").get("StatusText", "")


def run_tests(c, venv, secret, port):
    # What the module declares: users.users.maubot (system user and group), sops-nix secrets in /run/secrets,
    # the settings at their stable path.
    c.sh("useradd --system --user-group --home-dir /var/lib/maubot --no-create-home --shell /usr/sbin/nologin maubot")
    bcrypt_hash = run([os.path.join(venv, "bin", "python"), "-c",
                       "import bcrypt; print(bcrypt.hashpw(b'admin', bcrypt.gensalt(12)).decode())"]).stdout.strip()
    secrets = {
        "registration-shared-secret": secret,
        "admin-password-hash": bcrypt_hash,
        "secret-key": os.urandom(32).hex(),
    }
    c.sh("mkdir -p -m 0755 /run/secrets/maubot")
    for name, value in secrets.items():
        with open(f"{c.root}/run/secrets/maubot/{name}", "w") as f:
            f.write(value + "\n")
        c.sh(f"chmod 0400 /run/secrets/maubot/{name}")
    write_settings(c, port)
    c.sh("systemctl daemon-reload")

    # 1. Without state: exit 78 and no restart loop; nothing created in the state directory.
    started = c.sh("systemctl start maubot.service")
    if not c.show("maubot", "InvocationID").get("InvocationID"):
        # Seen rarely right after boot: the start job never ran the unit (no invocation, nothing in its journal).
        # That is the container's systemd, not the unit: say so and start it once more.
        print(f"note: the first start did not run the unit ({started.stderr.strip()}); starting it again")
        started = c.sh("systemctl start maubot.service")
    props = wait_until(lambda: (lambda p: p if p.get("ActiveState") == "failed" else None)(
        c.show("maubot", "ActiveState", "ExecMainStatus", "NRestarts", "Result")), 20)
    check("without state the unit fails with exit 78", props and props.get("ExecMainStatus") == "78",
          (props, started.returncode, started.stderr[-500:], c.sh("journalctl -n 30 --no-pager").stdout))
    time.sleep(7)  # longer than RestartSec=5
    props = c.show("maubot", "ActiveState", "NRestarts")
    check("... and is not restarted (RestartPreventExitStatus=78)",
          props.get("NRestarts") == "0" and props.get("ActiveState") == "failed", props)
    check("... and names the fix as the module's wrapper, maubot-setup", "Run `maubot-setup`" in c.journal("maubot"),
          c.journal("maubot")[-800:])
    mode = c.sh("stat -c '%a %U' /var/lib/maubot").stdout.strip()
    contents = c.sh("ls -A /var/lib/maubot").stdout.strip()
    check("the state directory systemd made is 0700, owned by maubot, and empty",
          mode == "700 maubot" and contents == "", (mode, contents))

    # 2. maubot-ctl and maubot-setup: the daemon's modes under the service's identity, credentials and sandbox.
    checked = c.sh("bash /usr/local/bin/maubot-ctl check-config < /dev/null", timeout=60)
    check("maubot-ctl check-config validates the service's config with its credentials",
          checked.returncode == 0 and "{credential: registration-shared-secret}" in checked.stdout,
          checked.stdout[-500:] + checked.stderr[-500:])
    setup = c.sh("bash /usr/local/bin/maubot-setup --recovery-key-file /root/maubot-keys.txt < /dev/null", timeout=180)
    check("maubot-setup succeeds under the unit's sandbox", setup.returncode == 0, setup.stdout + setup.stderr)
    keys = c.sh("stat -c '%a %U' /root/maubot-keys.txt && cat /root/maubot-keys.txt").stdout
    check("... and its recovery key file is where the operator asked (root's, 0400), though /root is read-only to "
          "the sandbox", keys.startswith("400 root") and f"ping {BOT} " in keys, keys)
    check("... which it says, and the key is not on stdout",
          "Recovery keys written to /root/maubot-keys.txt" in setup.stdout and "Recovery key for" not in setup.stdout,
          setup.stdout)
    check("... and nothing is left in the state directory but state",
          "recovery-keys" not in c.sh("ls -A /var/lib/maubot").stdout, c.sh("ls -A /var/lib/maubot").stdout)
    listing = c.sh("stat -c '%a %U %n' /var/lib/maubot /var/lib/maubot/maubot.db").stdout
    check("state is owned by maubot: directory 0700, database 0600",
          "700 maubot /var/lib/maubot" in listing and "600 maubot /var/lib/maubot/maubot.db" in listing, listing)

    # 3. The service: READY, STATUS, watchdog, credentials, hardening.
    c.sh("systemctl reset-failed maubot.service")
    started = c.sh("systemctl start maubot.service", timeout=150)
    props = c.show("maubot", "ActiveState", "SubState", "StatusText", "WatchdogUSec", "MainPID", "NRestarts")
    check("after READY=1 the unit is active (running)", started.returncode == 0 and props.get("ActiveState") == "active"
          and props.get("SubState") == "running", (started.stderr, props))
    check("STATUS= says the bots are syncing", "1/1 bots syncing" in props.get("StatusText", ""), props)
    check("the watchdog is armed (WatchdogSec=60)", props.get("WatchdogUSec") == "1min", props)
    watchdog_at_start = c.show("maubot", "WatchdogTimestampMonotonic").get("WatchdogTimestampMonotonic")
    pid = props.get("MainPID", "0")
    creds = c.sh("ls /run/credentials/maubot.service/").stdout.split()
    check("the service gets only what a running host reads (no registration secret, no bot passwords)",
          sorted(creds) == ["admin-admin", "secret-key"], creds)
    status = read(f"{c.root}/proc/{pid}/status") if pid != "0" else ""
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    check("hardening is enforced: no new privileges, seccomp filter, no capabilities",
          fields.get("NoNewPrivs", "").strip() == "1" and fields.get("Seccomp", "").strip() == "2"
          and fields.get("CapEff", "").strip() == "0000000000000000", {k: fields.get(k) for k in
                                                                          ("NoNewPrivs", "Seccomp", "CapEff")})
    uid = c.sh("id -u maubot").stdout.strip()
    check("the daemon runs as maubot", fields.get("Uid", "").split()[:1] == [uid], (fields.get("Uid"), uid))

    # 4. A real `!ping` through the real homeserver.
    client = run([os.path.join(venv, "bin", "python"), os.path.join(ROOT, "scripts", "demo_client.py"),
                  f"http://127.0.0.1:{port}", secret, BOT], timeout=150)
    check("a person's !ping is answered with pong", client.returncode == 0 and "pong (took" in client.stdout,
          client.stdout + client.stderr)

    # 5. A new bot in the config (as `nixos-rebuild switch` with reloadTriggers does): reload, not restart; the
    # service stays active and shows the bot as not set up; maubot-setup sets it up and reloads again.
    main_pid = c.show("maubot", "MainPID").get("MainPID")
    # The new bot is an `exec` bot: the example program, a separate Python process under the unit's sandbox.
    second = {"type": "exec", "user": SECOND_BOT, "enabled": True, "homeserver": "default", "room_subscriptions": [],
              "config": {"command": EXEC_PROGRAM, "allow_invites_from": ["@*:maubot.test"]}}
    write_settings(c, port, {"second": second})
    reloaded = c.sh("systemctl reload maubot.service", timeout=60)
    props = c.show("maubot", "ActiveState", "MainPID", "StatusText")
    check("systemctl reload re-reads the config without a restart",
          reloaded.returncode == 0 and props.get("ActiveState") == "active" and props.get("MainPID") == main_pid,
          (reloaded.stderr, props))
    check("... and the new bot waits for setup", "not set up: second" in props.get("StatusText", ""), props)
    added = c.sh("bash /usr/local/bin/maubot-setup < /dev/null", timeout=180)
    check("maubot-setup adds exactly the new bot", added.returncode == 0
          and "Setting up 1 bot: second (new)." in added.stdout and "Already set up, left alone: ping." in added.stdout,
          added.stdout + added.stderr)
    synced = wait_until(lambda: "2/2 bots syncing" in status_text(c), 60)
    check("... and reloads the service, which starts it beside the first", synced
          and c.show("maubot", "MainPID").get("MainPID") == main_pid,
          status_text(c) + "\n" + "\n".join(c.journal("maubot").splitlines()[-15:]))
    client = run([os.path.join(venv, "bin", "python"), os.path.join(ROOT, "scripts", "demo_client.py"),
                  f"http://127.0.0.1:{port}", secret, SECOND_BOT], timeout=150)
    check("the new bot, an exec program under the unit's hardening, answers !ping",
          client.returncode == 0 and "pong (took" in client.stdout, client.stdout + client.stderr)

    # 5b. A `media` bot: yt-dlp (a Python program) and ffprobe/ffmpeg (thumbnail) as children of the daemon,
    # under the unit's hardening (MemoryDenyWriteExecute=, the system call filter, PrivateUsers=...).
    wheel = next(name for name in os.listdir(f"{c.root}{YT_DLP_DIR}") if name.endswith(".whl"))
    with open(f"{c.root}{YT_DLP}", "w") as f:
        f.write(f"#!/bin/sh\nPYTHONPATH={YT_DLP_DIR}/{wheel} exec /usr/bin/python3 -m yt_dlp \"$@\"\n")
    c.sh(f"chmod 0755 {YT_DLP}")
    media = {"type": "media", "user": MEDIA_BOT, "enabled": True, "homeserver": "default", "room_subscriptions": [],
             "config": {"hosts": ["127.0.0.1"], "extractors": ["default"], "yt_dlp": YT_DLP, "ffmpeg": "/usr/bin/ffmpeg",
                        "ffprobe": "/usr/bin/ffprobe", "allow_invites_from": ["@*:maubot.test"]}}
    write_settings(c, port, {"second": second, "media": media})
    c.sh("systemctl reload maubot.service", timeout=60)
    added = c.sh("bash /usr/local/bin/maubot-setup < /dev/null", timeout=180)
    check("maubot-setup adds the media bot", added.returncode == 0 and "Setting up 1 bot: media (new)." in added.stdout,
          added.stdout + added.stderr)
    synced = wait_until(lambda: "3/3 bots syncing" in status_text(c), 60)
    check("... which starts (yt-dlp found)", synced, status_text(c) + "\n" + "\n".join(c.journal("maubot").splitlines()[-15:]))
    server, clip = serve_media(c)
    try:
        client = run([os.path.join(venv, "bin", "python"), os.path.join(ROOT, "scripts", "demo_client.py"),
                      f"http://127.0.0.1:{port}", secret, MEDIA_BOT, f"look: {clip}"], timeout=150)
    finally:
        server.terminate()
        server.wait()
    journal = c.journal("maubot")
    fetched = [json.loads(line) for line in c.sh("journalctl -o json --no-pager SYSLOG_IDENTIFIER=maubot").stdout.splitlines()
               if "fetched and uploaded" in line]
    check("a link is fetched by yt-dlp, probed and thumbnailed by ffprobe and ffmpeg under the unit's hardening, and "
          "posted as an m.video reply", client.returncode == 0 and "(m.video;" in client.stdout
          and any(e.get("THUMBNAIL") == "true" and e.get("PROBED") == "true" for e in fetched),
          (client.stdout + client.stderr, fetched, "\n".join(journal.splitlines()[-20:])))
    check("... with nothing left in the fetch directory",
          c.sh("ls -A /var/lib/maubot/instances/media/data/fetches 2>/dev/null").stdout.strip() == "",
          c.sh("ls -lR /var/lib/maubot/instances/media/data").stdout)

    # 6. The watchdog is fed while healthy: each WATCHDOG=1 (every 30 s) moves systemd's watchdog timestamp.
    fed = wait_until(lambda: c.show("maubot", "WatchdogTimestampMonotonic").get("WatchdogTimestampMonotonic")
                     not in (None, "0", watchdog_at_start), 45)
    check("the daemon feeds the watchdog", fed, (watchdog_at_start, c.show("maubot", "WatchdogTimestampMonotonic")))

    # 7. Stop: STOPPING, clean exit, journald with structured fields, no seccomp denial anywhere.
    stopped = c.sh("systemctl stop maubot.service", timeout=60)
    props = c.show("maubot", "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    check("SIGTERM stops the daemon cleanly", stopped.returncode == 0 and props.get("Result") == "success"
          and props.get("ExecMainStatus") == "0", props)
    journal = c.sh("journalctl -o json --no-pager SYSLOG_IDENTIFIER=maubot").stdout
    entries = [json.loads(line) for line in journal.splitlines() if line.startswith("{")]
    check("logs reach journald natively with structured fields",
          any(e.get("INSTANCE") == "ping" and "MESSAGE" in e for e in entries), f"{len(entries)} entries")
    everything = c.sh("journalctl --no-pager -o cat").stdout
    ours = c.sh("journalctl --no-pager -o cat -u maubot.service -u maubot-setup.service -u 'maubot-ctl-*'").stdout
    check("no seccomp kill or denial during setup, run, reload or shutdown",
          "status=31/SYS" not in everything and "SIGSYS" not in everything and "not permitted" not in ours,
          [line for line in ours.splitlines() if "SYS" in line or "not permitted" in line][:5])

    # 8. State lost after setup: exit 78 again, no restart, and the state is not recreated.
    c.sh("mv /var/lib/maubot/maubot.db /var/lib/maubot/maubot.db.aside")
    c.sh("systemctl start maubot.service")
    props = wait_until(lambda: (lambda p: p if p.get("ActiveState") == "failed" else None)(
        c.show("maubot", "ActiveState", "ExecMainStatus", "NRestarts")), 20)
    time.sleep(7)
    props = c.show("maubot", "ActiveState", "ExecMainStatus", "NRestarts")
    check("a lost database gives exit 78 without restarts", props.get("ExecMainStatus") == "78"
          and props.get("NRestarts") == "0" and props.get("ActiveState") == "failed", props)
    check("... and run did not create a new one", c.sh("test -e /var/lib/maubot/maubot.db").returncode != 0)
    c.sh("mv /var/lib/maubot/maubot.db.aside /var/lib/maubot/maubot.db; systemctl reset-failed maubot.service")
    restarted = c.sh("systemctl start maubot.service", timeout=150)
    check("with the state restored it runs again", restarted.returncode == 0
          and "3/3 bots syncing" in status_text(c), restarted.stderr)

    # 9. Backup and restore under the unit's sandbox (maubot-ctl): a backup while the bots run, the state
    # directory lost, the archive restored into the empty directory systemd makes, the bots back with their devices.
    backup = c.sh("bash /usr/local/bin/maubot-ctl backup --to /var/lib/maubot/backup.tar < /dev/null", timeout=120)
    check("maubot-ctl backup writes an archive while the service runs",
          backup.returncode == 0 and "3 bots (media, ping, second)" in backup.stdout
          and "3/3 bots syncing" in status_text(c), backup.stdout + backup.stderr)
    recorded = ("python3 -c \"import sqlite3; print(sqlite3.connect('file:/var/lib/maubot/maubot.db?mode=ro', uri=True)"
                ".execute('SELECT id, device_id FROM instances ORDER BY id').fetchall())\"")
    devices = c.sh(recorded).stdout
    c.sh("systemctl stop maubot.service; mv /var/lib/maubot /var/lib/maubot.lost")
    restored = c.sh("bash /usr/local/bin/maubot-ctl restore --from /var/lib/maubot.lost/backup.tar < /dev/null",
                    timeout=120)
    check("maubot-ctl restore puts it back into the empty state directory of the sandbox",
          restored.returncode == 0 and "Restored" in restored.stdout, restored.stdout + restored.stderr)
    after = c.sh(recorded).stdout
    started = c.sh("systemctl start maubot.service", timeout=150)
    synced = wait_until(lambda: "3/3 bots syncing" in status_text(c), 60)
    check("... and the bots run again with the same devices", started.returncode == 0 and synced
          and after.strip() != "" and after == devices, (devices, after, status_text(c)))


if __name__ == "__main__":
    sys.exit(main())
