# Generations: a second system generation with another bot is switched to (the new bot is set up with
# `maubot-setup --add-instance`), then the first generation is switched back to, as `nixos-rebuild --rollback`
# does. Bot state stays intact throughout: same devices, both bots answer again when the generation with both
# returns, without another setup.
{ self, sops-nix }:
{ lib, ... }:
let
  person = "alice";
  personPassword = "alice-vm-test-password";
  first = "@pingbot:maubot.test";
  second = "@secondbot:maubot.test";
in
{
  name = "maubot-generations";

  nodes.machine =
    { config, pkgs, ... }:
    {
      imports = [
        self.nixosModules.default
        sops-nix.nixosModules.sops
        ./common/sops-test-key.nix
      ];
      system.switch.enable = true;

      services.matrix-continuwuity = {
        enable = true;
        settings.global = {
          server_name = "maubot.test";
          address = [ "127.0.0.1" ];
          allow_registration = true;
          admin_execute = [ "users create ${person} ${personPassword}" ];
          admin_execute_errors_ignore = true;
        };
      };
      sops.templates."continuwuity-registration.env".content =
        "CONTINUWUITY_REGISTRATION_TOKEN=${config.sops.placeholder."maubot/registration-token"}\n";
      systemd.services.continuwuity.serviceConfig.EnvironmentFile =
        config.sops.templates."continuwuity-registration.env".path;
      sops.secrets."maubot/registration-token".restartUnits = [ "maubot.service" ];

      services.maubot = {
        enable = true;
        homeserverUrl = "http://127.0.0.1:6167";
        serverName = "maubot.test";
        registrationTokenFile = config.sops.secrets."maubot/registration-token".path;
        instances.ping = {
          type = "ping";
          user = first;
          config.allow_invites_from = [ "@*:maubot.test" ];
        };
      };

      # The next generation: one more bot.
      specialisation.two-bots.configuration.services.maubot.instances.second = {
        type = "ping";
        user = second;
        config.allow_invites_from = [ "@*:maubot.test" ];
      };

      environment.systemPackages = [
        pkgs.sqlite
        (pkgs.writers.writePython3Bin "ping-client" { flakeIgnore = [ "E501" ]; } (
          builtins.readFile ../nix/ping-client.py
        ))
      ];
    };

  testScript = ''
    def devices():
        return machine.succeed("sqlite3 /var/lib/maubot/maubot.db 'select id, device_id from instances order by id'").strip()

    def ping(room_file, *bots):
        out = machine.succeed(f"ping-client http://127.0.0.1:6167 ${person} ${personPassword} {' '.join(bots)} --room-file {room_file}")
        for bot in bots:
            assert f"{bot}: pong" in out, out

    start_all()
    machine.wait_for_unit("continuwuity.service")
    machine.wait_for_open_port(6167)
    machine.succeed("maubot-setup < /dev/null")
    machine.succeed("systemctl reset-failed maubot.service; systemctl restart maubot.service")
    machine.wait_for_unit("maubot.service")
    ping("/root/room-one", "${first}")
    one_bot = devices()

    with subtest("switching to the generation with a second bot reloads the service; the new bot waits for setup"):
        pid = machine.succeed("systemctl show -p MainPID --value maubot.service").strip()
        machine.succeed("/run/current-system/specialisation/two-bots/bin/switch-to-configuration test")
        machine.wait_until_succeeds("systemctl show -p StatusText --value maubot.service | grep -q 'not set up: second'")
        assert machine.succeed("systemctl show -p MainPID --value maubot.service").strip() == pid, "reloaded, not restarted"
        machine.succeed("systemctl is-active maubot.service")
        machine.succeed("journalctl -u maubot.service | grep -q 'maubot-setup --add-instance second'")
        ping("/root/room-one", "${first}")

    with subtest("maubot-setup adds the second bot and reloads; both answer"):
        out = machine.succeed("maubot-setup < /dev/null")
        assert "Setting up 1 bot: second (new)." in out and "Already set up, left alone: ping." in out, out
        machine.wait_until_succeeds("systemctl show -p StatusText --value maubot.service | grep -q '2/2 bots syncing'")
        assert machine.succeed("systemctl show -p MainPID --value maubot.service").strip() == pid
        ping("/root/room-two", "${first}", "${second}")
        two_bots = devices()
        assert one_bot in two_bots, (one_bot, two_bots)

    with subtest("rolling back to the first generation keeps every bot's state"):
        machine.succeed("/run/booted-system/bin/switch-to-configuration test")
        machine.wait_until_succeeds("systemctl show -p StatusText --value maubot.service | grep -q '1/1 bots syncing'")
        assert machine.succeed("systemctl show -p MainPID --value maubot.service").strip() == pid
        ping("/root/room-one", "${first}")
        assert devices() == two_bots, devices()

    with subtest("forward again: the second bot answers without another setup"):
        machine.succeed("/run/current-system/specialisation/two-bots/bin/switch-to-configuration test")
        machine.wait_until_succeeds("systemctl show -p StatusText --value maubot.service | grep -q '2/2 bots syncing'")
        ping("/root/room-two", "${first}", "${second}")
        assert devices() == two_bots, devices()
  '';
}
