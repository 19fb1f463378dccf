#!/usr/bin/env python3
"""Evaluates services.maubot with nixpkgs' lib (lib.evalModules + stubs.nix) and checks what it renders.

- the example configuration passes every assertion, and renders exactly the golden unit, settings and
  maubot-setup script that the real-systemd test (tests/systemd/) installs;
- bad configurations fail with actionable assertion messages, or with type errors;
- the build-time check-config command is wired.

Needs a nixpkgs `lib` tree: $NIXPKGS_LIB (a directory holding lib/), else a local nix-community/nixpkgs.lib git
mirror at /work/.mirror (exported to a temporary directory). Without one, it says SKIPPED and exits 77 (the
test runner reports the step as skipped, not passed): nothing else here can evaluate a module.
`--update-golden` rewrites tests/systemd/golden/ from the module.
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
from checks import check, summary  # noqa: E402
GOLDEN = os.path.join(ROOT, "tests", "systemd", "golden")
MIRROR = "/work/.mirror/nix-community+nixpkgs.lib/repo"
ENV = dict(os.environ, NIX_CONFIG="substituters =\nexperimental-features = nix-command flakes\nfsync-metadata = false")


def find_lib():
    if os.environ.get("NIXPKGS_LIB"):
        return os.path.join(os.environ["NIXPKGS_LIB"], "lib")
    if os.path.isdir(MIRROR):
        out = tempfile.mkdtemp(prefix="nixpkgs-lib-")
        archive = subprocess.run(["git", "-C", MIRROR, "archive", "HEAD"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", out], input=archive, check=True)
        return os.path.join(out, "lib")
    return None


def evaluate(lib, configuration, check_config=False, default_package=False):
    """Returns (result dict, None) or (None, error text)."""
    args = [
        "nix-instantiate", "--read-write-mode", "--eval", "--strict", "--json",
        os.path.join(HERE, "eval-module.nix"),
        "--arg", "lib", f"import {lib}",
        "--arg", "checkConfig", "true" if check_config else "false",
        "--arg", "defaultPackage", "true" if default_package else "false",
    ]
    if configuration.startswith("{"):
        args += ["--arg", "configuration", configuration]
    else:
        args += ["--arg", "configuration", os.path.join(HERE, configuration)]
    proc = subprocess.run(args, capture_output=True, text=True, env=ENV)
    if proc.returncode != 0:
        return None, proc.stderr
    return json.loads(proc.stdout), None


def module_with(extra):
    """A configuration: the example plus `extra` (Nix attribute set text)."""
    return "{ imports = [ %s ]; config = %s; }" % (os.path.join(HERE, "example-configuration.nix"), extra)


def read(path):
    with open(path) as f:
        return f.read()


def main():
    lib = find_lib()
    if lib is None:
        print("SKIPPED eval-test: no nixpkgs lib tree here (set NIXPKGS_LIB to a directory holding lib/); the module "
              "was not evaluated")
        return 77

    example, error = evaluate(lib, "example-configuration.nix")
    if example is None:
        print(error)
        return 1
    rendered = {
        "maubot.service": example["unit"],
        "settings.json": example["settings"],
        "maubot-setup": example["setupScript"],
        "maubot-ctl": example["ctlScript"],
    }
    if "--update-golden" in sys.argv:
        os.makedirs(GOLDEN, exist_ok=True)
        for name, text in rendered.items():
            with open(os.path.join(GOLDEN, name), "w") as f:
                f.write(text)
        print(f"golden files written to {GOLDEN}")
        return 0

    check("example passes every assertion", example["failedAssertions"] == [], example["failedAssertions"])
    check("example has no warnings", example["warnings"] == [], example["warnings"])
    for name, text in rendered.items():
        golden = read(os.path.join(GOLDEN, name))
        check(f"golden {name} matches the module's rendering", golden == text,
              f"--- golden\n{golden}\n--- rendered\n{text}\n(run tests/nix/eval-test.py --update-golden)")
    unit = example["unit"]
    for line in ["Type=notify", "NotifyAccess=main", "WatchdogSec=60", "Restart=on-failure",
                 "RestartPreventExitStatus=78", "User=maubot", "StateDirectory=maubot", "StateDirectoryMode=0700",
                 "UMask=0077", "ProtectSystem=strict", "NoNewPrivileges=true", "CapabilityBoundingSet=",
                 "MemoryDenyWriteExecute=true", "PrivateIPC=true", "StartLimitBurst=5", "StartLimitIntervalSec=600",
                 "ExecReload=/usr/bin/kill -HUP $MAINPID", "IPAddressDeny=any", "IPAddressAllow=localhost",
                 "ExecStart=/nix/store/5qxq6pj1y1z0h7rg8l4m9r7s0v3b2c1a-maubot-0.1.0/bin/maubot --override "
                 "/etc/maubot/settings.json run",
                 "LoadCredential=secret-key:/run/secrets/maubot/secret-key"]:
        check(f"unit has {line}", f"\n{line}\n" in f"\n{unit}", unit)
    filters = [line for line in unit.splitlines() if line.startswith("SystemCallFilter=")]
    check("SystemCallFilter is an allow list minus privileged and resource calls",
          filters == ["SystemCallFilter=@system-service", "SystemCallFilter=~@privileged @resources"], filters)
    check("the service does not receive setup-only secrets (registration secret, bot passwords)",
          "registration-shared-secret" not in unit, unit)
    check("a changed config reloads the service (reloadTriggers = the settings file)",
          f"X-Reload-Triggers={example['settingsPath']}" in unit, unit)
    check("the settings are at a stable path", example["etc"].get("maubot/settings.json") == example["settingsPath"],
          example["etc"])
    settings = json.loads(example["settings"])
    check("settings reference credentials, never values",
          settings["homeservers"]["default"]["registration_shared_secret"] == {"credential": "registration-shared-secret"},
          settings)
    check("user settings are merged over generated ones", settings["logging"]["level"] == "info,maubot=debug", settings)
    check("messages name the module's setup wrapper", settings["host"]["setup_command"] == "maubot-setup", settings)
    setup = example["setupScript"]
    check("maubot-setup runs setup with the unit's sandbox and every credential",
          "systemd-run" in setup and "-p 'LoadCredential=registration-shared-secret:" in setup
          and "-p 'ProtectSystem=strict'" in setup and ' setup "${args[@]}"' in setup, setup)
    check("maubot-setup reloads the running service", "systemctl reload maubot.service" in setup, setup)
    check("maubot-setup writes the recovery key file outside the sandbox",
          "--recovery-key-file-shown-as" in setup and "install -m 0400" in setup, setup)
    check("maubot-ctl runs maubot with the service's config and sandbox",
          "systemd-run" in (example["ctlScript"] or "") and "--override /etc/maubot/settings.json" in example["ctlScript"],
          example["ctlScript"])
    check("a system user and group are declared", example["users"] == ["maubot"], example["users"])

    standalone, error = evaluate(lib, "example-configuration.nix", default_package=True)
    check("the module evaluates on its own: its default package is this repository's daemon (package.nix)",
          standalone is not None and standalone["failedAssertions"] == [] and standalone["packageName"] == "maubot-0.1.0",
          error or (standalone or {}).get("failedAssertions"))

    checked, error = evaluate(lib, "example-configuration.nix", check_config=True)
    check("build-time check-config is wired", checked is not None and "check-config" in (checked["checkScript"] or "")
          and "credentials/registration-shared-secret" in checked["checkScript"], error or checked)

    # Bad configurations and the message that must name the problem and the fix.
    cases = [
        ("inline secret in settings",
         '{ services.maubot.settings.instances.ping.password = "hunter2"; }',
         "settings.instances.ping.password"),
        ("inline secret in plugin config",
         '{ services.maubot.instances.ping.config.webhook_secret = "s3cret"; }',
         "instances.ping.config.webhook_secret"),
        ("inline admin hash",
         '{ services.maubot.settings.admins.alice = "$2b$12$abc"; }',
         "settings.admins.alice"),
        ("bad user id",
         '{ services.maubot.instances.ping.user = lib.mkForce "pingbot"; }',
         'instances.ping.user = "pingbot" is not a Matrix user ID'),
        ("unknown plugin type",
         '{ services.maubot.instances.ping.type = lib.mkForce "pong"; }',
         'instances.ping.type = "pong" is not a known plugin type'),
        ("user on another server",
         '{ services.maubot.instances.ping.user = lib.mkForce "@ping:elsewhere.org"; }',
         "is not on services.maubot.serverName"),
        ("room alias as subscription",
         '{ services.maubot.instances.ping.roomSubscriptions = [ "#room:maubot.test" ]; }',
         "not aliases"),
        ("bad instance id",
         '{ services.maubot.instances.Bad_Id = { type = "ping"; user = "@b:maubot.test"; }; }',
         "instances.Bad_Id: instance ids"),
        ("no way to log in",
         '{ services.maubot.registrationSharedSecretFile = lib.mkForce null; }',
         "no way to log in"),
        ("password and token",
         '{ services.maubot.instances.ping = { passwordFile = "/run/a"; accessTokenFile = "/run/b"; }; }',
         "not both"),
        ("port clash with a homeserver",
         '{ services.matrix-synapse = { enable = true; settings.listeners = [ { port = 29316; } ]; }; }',
         "clashes with a homeserver"),
        ("homeserver URL without scheme",
         '{ services.maubot.homeserverUrl = lib.mkForce "127.0.0.1:8008"; }',
         "is not an http(s) URL"),
        ("nixpkgs' Python maubot as the package",
         '{ services.maubot.package = lib.mkForce (import %s { inherit lib; }).pythonMaubot; }' % os.path.join(HERE, "stubs.nix"),
         "is not this module's daemon"),
        ("state moved out of StateDirectory",
         '{ services.maubot.settings.state_dir = "/srv/maubot"; }',
         "would move the bots' state out of /var/lib/maubot"),
        ("settings of the Python maubot",
         '{ services.maubot.settings = { plugin_directories.upload = "./plugins"; database = "sqlite:maubot.db"; }; }',
         "plugin_directories, database are settings of nixpkgs' Python maubot"),
        ("an option of the Python maubot module",
         '{ services.maubot.plugins = [ ]; }',
         "Plugins are built into the daemon"),
        ("an exec bot without a program",
         '{ services.maubot.instances.echo = { type = "exec"; user = "@echo:maubot.test"; passwordFile = "/run/e"; }; }',
         'type "exec" runs a program; set instances.echo.exec.package'),
        ("an exec package on a ping bot",
         '{ services.maubot.instances.ping.exec.package = { type = "derivation"; name = "x"; outPath = "/nix/store/x"; }; }',
         'set type = "exec"'),
        ("a bot listener on the management API's port",
         '{ services.maubot.instances.ping.listeners = [ { port = 29316; } ]; }',
         "instances.ping.listeners.0.port = 29316 is also used by port (the management API)"),
        ("two bot listeners on one port",
         '{ services.maubot.instances.ping.listeners = [ { port = 8443; } { port = 8443; address = "0.0.0.0"; } ]; }',
         "instances.ping.listeners.1.port = 8443 is also used by instances.ping.listeners.0"),
        ("a TLS listener without its key",
         '{ services.maubot.instances.ping.listeners = [ { port = 8443; tls.certificateFile = "/etc/c.pem"; } ]; }',
         "needs tls.keyFile"),
        ("extraConfigFile of the Python maubot module",
         '{ services.maubot.extraConfigFile = "./config.yaml"; }',
         "services.maubot.settings"),
    ]
    for name, extra, expected in cases:
        config = "{ lib, ... }: " + module_with(extra)
        result, error = evaluate(lib, config)
        messages = (result or {}).get("failedAssertions", [])
        check(f"assertion: {name}", any(expected in m for m in messages), error or messages)

    result, error = evaluate(lib, "{ lib, ... }: " + module_with(
        '{ services.maubot.registrationSharedSecretFile = lib.mkForce "/nix/store/aaaa-secret"; }'))
    messages = (result or {}).get("failedAssertions", [])
    check("a secret file in the Nix store is refused",
          result is None and "store" in error or any("inside the Nix store" in m for m in messages), error or messages)

    result, error = evaluate(lib, "{ lib, ... }: " + module_with('{ services.maubot.port = "high"; }'))
    check("option types are enforced", result is None and "port" in error, error or result)

    result, _ = evaluate(lib, "{ lib, ... }: " + module_with(
        '{ services.maubot.homeserverUrl = lib.mkForce "http://localhost:8008"; }'))
    check("localhost homeserver URL warns", result is not None and any("localhost" in w for w in result["warnings"]),
          result)

    result, _ = evaluate(lib, "{ lib, ... }: " + module_with(
        '{ services.matrix-continuwuity = { enable = true; settings.global.port = [ 6167 ]; }; }'))
    check("starts after a homeserver on the same host", result is not None and "After=network-online.target\nAfter=continuwuity.service" in result["unit"], result and result["unit"])

    result, _ = evaluate(lib, "{ lib, ... }: " + module_with('{ services.maubot.openFirewall = true; services.maubot.listenAddress = "0.0.0.0"; }'))
    check("openFirewall opens the port", result is not None and result["firewall"] == [29316], result)
    check("a management API beyond loopback lifts the network restriction",
          result is not None and "IPAddressDeny" not in result["unit"], result and result["unit"])

    result, _ = evaluate(lib, "{ lib, ... }: " + module_with(
        '{ services.maubot.homeserverUrl = lib.mkForce "https://matrix.example.org"; }'))
    check("a homeserver elsewhere lifts the network restriction",
          result is not None and "IPAddressDeny" not in result["unit"] and "IPAddressDeny" not in result["setupScript"],
          result and result["unit"])

    echo_bot = ('{ type = "derivation"; name = "echo-bot"; meta.mainProgram = "echo-bot"; '
                'outPath = "/nix/store/1c8p0e2vbq4yqk1z7q5h3m5w9r0x2n6s-echo-bot"; }')
    result, error = evaluate(lib, "{ lib, ... }: " + module_with(
        '{ services.maubot.instances.echo = { type = "exec"; user = "@echo:maubot.test"; passwordFile = "/run/e"; '
        'exec = { package = %s; args = [ "--quiet" ]; }; config.settings.prefix = "?"; }; }' % echo_bot))
    echo = json.loads(result["settings"])["instances"]["echo"]["config"] if result else None
    check("exec.package becomes the program's command, with its args, beside the plugin's own settings",
          result is not None and result["failedAssertions"] == [] and echo == {
              "command": "/nix/store/1c8p0e2vbq4yqk1z7q5h3m5w9r0x2n6s-echo-bot/bin/echo-bot",
              "args": ["--quiet"], "settings": {"prefix": "?"}}, error or (result or {}).get("failedAssertions") or echo)

    result, error = evaluate(lib, "{ lib, ... }: " + module_with(
        '{ services.maubot.instances.ping.listeners = [ { address = "0.0.0.0"; port = 8443; openFirewall = true; '
        'tls = { certificateFile = "/var/lib/acme/bots/fullchain.pem"; keyFile = "/run/secrets/bots-key"; '
        'clientCaFile = "/etc/maubot/deploy-ca.pem"; }; } { port = 8080; } ]; }'))
    listeners = json.loads(result["settings"])["instances"]["ping"].get("listeners") if result else None
    check("a bot's listeners render with their key as a credential, and open the firewall where asked",
          result is not None and result["failedAssertions"] == [] and listeners == [
              {"address": "0.0.0.0", "port": 8443, "tls": {
                  "certificate": "/var/lib/acme/bots/fullchain.pem",
                  "private_key": {"credential": "ping-listener-0-key"},
                  "client_ca": "/etc/maubot/deploy-ca.pem"}},
              {"address": "127.0.0.1", "port": 8080}]
          and result["firewall"] == [8443]
          and "LoadCredential=ping-listener-0-key:/run/secrets/bots-key" in result["unit"]
          and "IPAddressDeny" not in result["unit"],
          error or (result or {}).get("failedAssertions") or listeners)

    result, error = evaluate(lib, "{ lib, ... }: " + module_with(
        '{ services.maubot.instances.ping.serverAdmin = true; }'))
    rendered = json.loads(result["settings"])["instances"]["ping"] if result else {}
    default, _ = evaluate(lib, "{ lib, ... }: " + module_with("{ }"))
    by_default = json.loads(default["settings"])["instances"]["ping"] if default else {}
    check("serverAdmin renders server_admin, which setup reads; absent by default",
          rendered.get("server_admin") is True and "server_admin" not in by_default, error or rendered)

    result, error = evaluate(lib, "{ lib, ... }: " + module_with(
        '{ services.maubot.instances = { community = { type = "space"; user = "@community:maubot.test"; '
        'serverAdmin = true; passwordFile = "/run/c"; config = { deployment = "fleet"; space.name = "Fleet"; }; }; '
        'doorman = { type = "guard"; user = "@doorman:maubot.test"; passwordFile = "/run/d"; '
        'config.rooms."#fleet-general:maubot.test".spaces = [ "community" ]; }; }; }'))
    rendered = json.loads(result["settings"])["instances"] if result else {}
    check("a space and a guard instance deploy (the module knows every built-in type)",
          result is not None and result["failedAssertions"] == []
          and rendered.get("community", {}).get("type") == "space"
          and rendered.get("doorman", {}).get("config") == {
              "rooms": {"#fleet-general:maubot.test": {"spaces": ["community"]}}},
          error or (result or {}).get("failedAssertions") or rendered)

    github = ('{ services.maubot.publicListener = { address = "0.0.0.0"; port = 8090; openFirewall = true; }; '
              'services.maubot.trustedProxies = [ "127.0.0.1" ]; '
              'services.maubot.instances.gh = { type = "github"; user = "@gh:maubot.test"; passwordFile = "/run/g"; '
              'secretFiles.webhook = "/run/secrets/gh-webhook"; config = { secret = %s; '
              'routes = [ { repository = "octo/app"; room = "!r:maubot.test"; } ]; }; }; }')
    result, error = evaluate(lib, "{ lib, ... }: " + module_with(github % '{ credential = "gh-webhook"; }'))
    settings = json.loads(result["settings"]) if result else {}
    check("a github instance deploys behind the public listener: its secret a credential, the port opened",
          result is not None and result["failedAssertions"] == []
          and settings["server"].get("public_listener") == {"address": "0.0.0.0", "port": 8090}
          and settings["server"].get("trusted_proxies") == ["127.0.0.1"]
          and settings["instances"]["gh"]["config"]["secret"] == {"credential": "gh-webhook"}
          and 8090 in result["firewall"]
          and "LoadCredential=gh-webhook:/run/secrets/gh-webhook" in result["unit"]
          and any("publicListener serves plain HTTP" in w for w in result["warnings"]),
          error or (result or {}).get("failedAssertions") or settings)
    result, error = evaluate(lib, "{ lib, ... }: " + module_with(github % '"hunter2"'))
    check("a webhook secret written inline is refused (it would be in the Nix store)",
          result is not None and any("instances.gh.config.secret" in a for a in result["failedAssertions"]),
          error or (result or {}).get("failedAssertions"))
    result, error = evaluate(lib, "{ lib, ... }: " + module_with(
        '{ services.maubot.publicListener = { address = "0.0.0.0"; port = 8090; tls = { certificateFile = "/c.pem"; '
        'keyFile = "/run/secrets/k"; clientCaFile = "/ca.pem"; }; }; }'))
    check("the public listener takes no client certificates",
          result is not None and any("publicListener.tls.clientCaFile" in a for a in result["failedAssertions"]),
          error or (result or {}).get("failedAssertions"))
    result, error = evaluate(lib, "{ lib, ... }: " + module_with(
        '{ services.maubot.publicListener = { port = 29316; }; }'))
    check("the public listener's port may not be the management API's",
          result is not None and any("publicListener.port = 29316" in a for a in result["failedAssertions"]),
          error or (result or {}).get("failedAssertions"))

    result, error = evaluate(lib, "{ lib, ... }: " + module_with(
        '{ services.maubot.instances.clips = { type = "media"; user = "@clips:maubot.test"; passwordFile = "/run/m"; '
        'secretFiles.cookies = "/run/secrets/instagram-cookies"; '
        'config = { cookies = { credential = "clips-cookies"; }; max_file_size = 20000000; }; }; }'))
    clips = json.loads(result["settings"])["instances"]["clips"]["config"] if result else {}
    check("a media instance gets nixpkgs' yt-dlp and ffmpeg by store path, its cookies as a credential",
          result is not None and result["failedAssertions"] == [] and clips == {
              "yt_dlp": "/nix/store/0yt0d1p0000000000000000000000000-yt-dlp-2026.11.23/bin/yt-dlp",
              "ffmpeg": "/nix/store/0ffmpeg00000000000000000000000000-ffmpeg-headless-7.1/bin/ffmpeg",
              "ffprobe": "/nix/store/0ffmpeg00000000000000000000000000-ffmpeg-headless-7.1/bin/ffprobe",
              "cookies": {"credential": "clips-cookies"}, "max_file_size": 20000000}
          and "LoadCredential=clips-cookies:/run/secrets/instagram-cookies" in result["unit"]
          and "IPAddressDeny" not in result["unit"],
          error or (result or {}).get("failedAssertions") or clips)
    result, error = evaluate(lib, "{ lib, ... }: " + module_with(
        '{ services.maubot.instances.clips = { type = "media"; user = "@clips:maubot.test"; passwordFile = "/run/m"; '
        'media.ffmpegPackage = null; config.yt_dlp = "/opt/yt-dlp"; }; }'))
    clips = json.loads(result["settings"])["instances"]["clips"]["config"] if result else {}
    check("... a yt_dlp set in config wins, and without ffmpeg none is named",
          clips == {"yt_dlp": "/opt/yt-dlp"}, error or clips)

    result, error = evaluate(lib, "{ lib, ... }: " + module_with(
        '{ services.maubot.backup = { enable = true; keep = 3; schedule = "*-*-* 03:30:00"; }; }'))
    backup = (result or {}).get("backup") or {}
    service = backup.get("service", {})
    check("backup.enable: a timer runs `maubot backup` with the service's user and sandbox into its own directory, "
          "keeping the newest 3",
          result is not None and result["failedAssertions"] == []
          and backup.get("timer") == {"OnCalendar": "*-*-* 03:30:00", "Persistent": True, "RandomizedDelaySec": "10min"}
          and service.get("User") == "maubot" and service.get("ProtectSystem") == "strict"
          and service.get("ReadWritePaths") == ["/var/backup/maubot"] and service.get("Type") == "oneshot"
          and service.get("LoadCredential") == []
          and "backup --to \"$dir/maubot-$(date -u +%Y%m%dT%H%M%SZ).tar\"" in backup.get("script", "")
          and "tail -n +4" in backup.get("script", "")
          and backup.get("tmpfiles") == ["d /var/backup/maubot 0700 maubot maubot - -"],
          error or backup)
    result, error = evaluate(lib, "{ lib, ... }: " + module_with(
        '{ services.maubot.backup = { enable = true; directory = "/var/lib/maubot/backups"; }; }'))
    check("a backup directory inside the state directory is refused",
          result is not None and any("backup.directory" in a for a in result["failedAssertions"]),
          error or (result or {}).get("failedAssertions"))
    recipient = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
    result, error = evaluate(lib, "{ lib, ... }: " + module_with(
        '{ services.maubot.backup = { enable = true; encryptTo = [ "%s" ]; }; }' % recipient))
    script = ((result or {}).get("backup") or {}).get("script", "")
    check("backup.encryptTo: archives are encrypted to the recipients and named .tar.age, and pruning sees them",
          result is not None and result["failedAssertions"] == []
          and '.tar.age" --encrypt-to %s' % recipient in script and "\\.tar(\\.age)?$" in script,
          error or script)
    result, error = evaluate(lib, "{ lib, ... }: " + module_with(
        '{ services.maubot.backup = { enable = true; encryptTo = [ "AGE-SECRET-KEY-1XYZ" ]; }; }'))
    check("... an identity given as a recipient is refused, naming it",
          result is not None and any("AGE-SECRET-KEY-1XYZ is not an age X25519 recipient" in a
                                     for a in result["failedAssertions"]),
          error or (result or {}).get("failedAssertions"))
    default, _ = evaluate(lib, "{ lib, ... }: " + module_with("{ }"))
    check("... and without backup.enable there is no backup unit", default is not None and default["backup"] is None,
          default and default.get("backup"))

    result, _ = evaluate(lib, "{ lib, ... }: " + module_with('{ services.maubot.allowWritableExecutableMemory = true; }'))
    check("allowWritableExecutableMemory turns off MemoryDenyWriteExecute, with a warning",
          result is not None and "\nMemoryDenyWriteExecute=false\n" in result["unit"]
          and any("MemoryDenyWriteExecute" in w for w in result["warnings"]), result and result["warnings"])

    return summary()


if __name__ == "__main__":
    sys.exit(main())
