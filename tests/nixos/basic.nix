# services.maubot with a conduwuit-family homeserver (continuwuity) on the same node, secrets from sops:
# setup-then-run, `!ping` answered, the device kept across restarts, exit 78 without restarts when state is
# missing (and no new device), secrets neither readable by other users nor in the Nix store.
{ self, sops-nix }:
{ lib, ... }:
let
  # Plaintext of secrets/test-secrets.yaml (public TEST values; see scripts/make-test-secrets.sh).
  registrationToken = "maubot-vm-test-registration-token";
  person = "alice";
  personPassword = "alice-vm-test-password";
  bot = "@pingbot:maubot.test";
in
{
  name = "maubot-basic";

  nodes.machine =
    { config, pkgs, ... }:
    {
      imports = [
        self.nixosModules.default
        sops-nix.nixosModules.sops
        ./common/sops-test-key.nix
      ];

      services.matrix-continuwuity = {
        enable = true;
        settings.global = {
          server_name = "maubot.test";
          address = [ "127.0.0.1" ];
          allow_registration = true;
          # The first account ends continuwuity's first-run mode, after which the registration token works.
          admin_execute = [ "users create ${person} ${personPassword}" ];
          admin_execute_errors_ignore = true;
        };
      };
      # The token reaches continuwuity through an environment file rendered by sops-nix (works on every version).
      sops.templates."continuwuity-registration.env" = {
        content = "CONTINUWUITY_REGISTRATION_TOKEN=${config.sops.placeholder."maubot/registration-token"}\n";
        restartUnits = [ "continuwuity.service" ];
      };
      systemd.services.continuwuity.serviceConfig.EnvironmentFile =
        config.sops.templates."continuwuity-registration.env".path;


      sops.secrets = {
        "maubot/registration-token".restartUnits = [ "maubot.service" ];
        "maubot/admin-password-hash".restartUnits = [ "maubot.service" ];
        "maubot/secret-key".restartUnits = [ "maubot.service" ];
      };

      services.maubot = {
        enable = true;
        homeserverUrl = "http://127.0.0.1:6167";
        serverName = "maubot.test";
        registrationTokenFile = config.sops.secrets."maubot/registration-token".path;
        adminPasswordHashFile = config.sops.secrets."maubot/admin-password-hash".path;
        secretKeyFile = config.sops.secrets."maubot/secret-key".path;
        instances.ping = {
          type = "ping";
          user = bot;
          config.allow_invites_from = [ "@*:maubot.test" ];
        };
      };

      environment.systemPackages = [
        pkgs.sqlite
        pkgs.curl
        pkgs.jq
        (pkgs.writers.writePython3Bin "ping-client" { flakeIgnore = [ "E501" ]; } (
          builtins.readFile ../nix/ping-client.py
        ))
      ];
    };

  testScript = ''
    import json

    def show(prop):
        return machine.succeed(f"systemctl show -p {prop} --value maubot.service").strip()

    def bot_devices(token):
        out = machine.succeed(f"curl -sf -H 'Authorization: Bearer {token}' http://127.0.0.1:6167/_matrix/client/v3/devices")
        return sorted(d["device_id"] for d in json.loads(out)["devices"])

    def ping():
        out = machine.succeed("ping-client http://127.0.0.1:6167 ${person} ${personPassword} ${bot} --room-file /root/room")
        assert "pong (took" in out, out

    start_all()
    machine.wait_for_unit("sops-install-secrets.service")
    machine.wait_for_unit("continuwuity.service")
    machine.wait_for_open_port(6167)

    with subtest("without state the service exits 78 and is not restarted"):
        machine.wait_until_succeeds("test \"$(systemctl show -p ExecMainStatus --value maubot.service)\" = 78")
        machine.sleep(8)
        assert show("NRestarts") == "0", show("NRestarts")
        assert show("ActiveState") == "failed"
        machine.succeed("journalctl -u maubot.service | grep -q 'Run `maubot-setup`'")
        machine.fail("test -e /var/lib/maubot/maubot.db")

    with subtest("maubot-ctl checks the service's config with its credentials"):
        out = machine.succeed("maubot-ctl check-config < /dev/null")
        assert "{credential: registration-token}" in out, out

    with subtest("maubot-setup registers the bot with the registration token from sops"):
        out = machine.succeed("maubot-setup < /dev/null")
        assert "Recovery key for instance `ping`" in out, out
        machine.succeed("test \"$(stat -c '%a %U' /var/lib/maubot)\" = '700 maubot'")

    with subtest("the service starts, says so, and answers !ping"):
        machine.succeed("systemctl reset-failed maubot.service; systemctl start maubot.service")
        machine.wait_for_unit("maubot.service")
        assert "1/1 bots syncing" in show("StatusText"), show("StatusText")
        ping()

    token = machine.succeed("sqlite3 /var/lib/maubot/maubot.db 'select access_token from instances'").strip()
    device = machine.succeed("sqlite3 /var/lib/maubot/maubot.db 'select device_id from instances'").strip()

    with subtest("a restart keeps the one device"):
        machine.succeed("systemctl restart maubot.service")
        machine.wait_for_unit("maubot.service")
        ping()
        assert bot_devices(token) == [device], bot_devices(token)

    with subtest("secrets are not readable by other users and not in the Nix store"):
        machine.fail("su -s /bin/sh nobody -c 'cat /run/secrets/maubot/registration-token'")
        machine.fail("su -s /bin/sh nobody -c 'cat /run/credentials/maubot.service/registration-token'")
        machine.fail("su -s /bin/sh nobody -c 'ls /var/lib/maubot'")
        store_paths = machine.succeed("systemctl cat maubot.service | grep -o '/nix/store/[^ /]*' | sort -u").split()
        store_paths += machine.succeed("readlink -f $(command -v maubot-setup)").split()
        for path in store_paths:
            machine.succeed(f"! grep -rqF '${registrationToken}' {path}")

    with subtest("state lost: exit 78, no restart loop, no new device on the server"):
        machine.succeed("systemctl stop maubot.service; mv /var/lib/maubot/maubot.db /root/maubot.db")
        machine.succeed("systemctl start maubot.service || true")
        machine.wait_until_succeeds("test \"$(systemctl show -p ExecMainStatus --value maubot.service)\" = 78")
        machine.sleep(8)
        assert show("NRestarts") == "0"
        machine.fail("test -e /var/lib/maubot/maubot.db")
        assert bot_devices(token) == [device], bot_devices(token)

    with subtest("state restored: the same bot answers again"):
        machine.succeed("mv /root/maubot.db /var/lib/maubot/maubot.db; chown maubot:maubot /var/lib/maubot/maubot.db")
        machine.succeed("systemctl reset-failed maubot.service; systemctl start maubot.service")
        machine.wait_for_unit("maubot.service")
        ping()
        assert bot_devices(token) == [device]
  '';
}
