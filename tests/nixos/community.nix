# The `space` plugin on a conduwuit-family homeserver (continuwuity), where users are administered through the
# admin room (`!admin users force-join-room`, `!admin users deactivate`) instead of Synapse's admin API: the Space
# and its rooms bootstrapped, the lifecycle API over mutual TLS (a certificate with the wrong name refused), a
# created user force-joined through admin-room commands, a revoked one deactivated (these servers have no erase,
# and the answer says so). The command texts themselves are unit-tested in src/plugin/server_admin.rs.
{ self, sops-nix }:
{ lib, ... }:
let
  person = "alice";
  personPassword = "alice-vm-test-password";
  member = "bob";
  memberPassword = "bob-vm-test-password";
  bot = "@community:maubot.test";
  pki = "/var/lib/test-pki";
in
{
  name = "maubot-community";

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
          # Run at every start: the people, and (once setup registered it) the bot made a server admin, which
          # puts it into the admin room `#admins:maubot.test`. Errors (the bot not there yet) are ignored.
          admin_execute = [
            "users create ${person} ${personPassword}"
            "users create ${member} ${memberPassword}"
            "users make-user-admin ${bot}"
          ];
          admin_execute_errors_ignore = true;
        };
      };
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
        instances.community = {
          type = "space";
          user = bot;
          listeners = [
            {
              address = "127.0.0.1";
              port = 8443;
              tls = {
                certificateFile = "${pki}/server.pem";
                keyFile = "${pki}/server.key";
                clientCaFile = "${pki}/ca.pem";
              };
            }
          ];
          config = {
            deployment = "fleet";
            space = {
              name = "Fleet";
              topic = "everyone in the fleet";
            };
            rooms = {
              general.name = "General";
              admin = {
                name = "Admins";
                kind = "admin";
              };
            };
            callers = [ "deploy-app" ];
          };
        };
      };

      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
        pkgs.openssl
      ];
    };

  testScript = ''
    import json

    hs = "http://127.0.0.1:6167"
    pki = "${pki}"

    def issue(name, usage, san=""):
        ext = f"extendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else "")
        machine.succeed(
            f"cd {pki} && printf '{ext}' > {name}.ext"
            f" && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {name}.key"
            f" -out {name}.csr -subj /CN={name}"
            f" && openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
            f" -extfile {name}.ext -out {name}.pem"
        )

    def lifecycle(event, callsign, client="deploy-app"):
        return machine.succeed(
            f"curl -s -w '\\n%{{http_code}}' --cacert {pki}/ca.pem --cert {pki}/{client}.pem --key {pki}/{client}.key"
            f" -H 'content-type: application/json' -X POST https://127.0.0.1:8443/api/v1/users/{event}"
            f" -d '{json.dumps({'uuid': 'u-' + callsign, 'callsign': callsign})}'"
        ).rsplit("\n", 1)

    def login_body(user, password):
        return json.dumps({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password})

    def login(user, password):
        return machine.succeed(f"curl -s -X POST {hs}/_matrix/client/v3/login -d '{login_body(user, password)}'")

    start_all()
    machine.wait_for_unit("sops-install-secrets.service")
    machine.wait_for_unit("continuwuity.service")
    machine.wait_for_open_port(6167)

    with subtest("a CA, the listener's certificate and the deploy app's, made here"):
        machine.succeed(
            f"mkdir -p {pki} && cd {pki} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
            " -nodes -keyout ca.key -out ca.pem -subj /CN=deploy-ca -days 2"
        )
        issue("server", "serverAuth", "IP:127.0.0.1")
        issue("deploy-app", "clientAuth")
        issue("mallory", "clientAuth")

    with subtest("setup registers the bot; continuwuity makes it a server admin at its next start"):
        out = machine.succeed("maubot-setup < /dev/null")
        assert "Recovery key for instance `community`" in out, out
        machine.succeed("systemctl restart continuwuity.service")
        machine.wait_for_open_port(6167)

    with subtest("the Space and its rooms are bootstrapped"):
        machine.succeed("systemctl reset-failed maubot.service; systemctl restart maubot.service")
        machine.wait_for_unit("maubot.service")
        machine.wait_until_succeeds("journalctl -u maubot.service | grep -q 'the Space and its rooms are as the config says'")
        machine.succeed(f"curl -sf {hs}/_matrix/client/v3/directory/room/%23fleet-general%3Amaubot.test")

    with subtest("only the deploy app's certificate is let through"):
        body, status = lifecycle("created", "${member}", client="mallory")
        assert status == "403", (status, body)
        machine.fail(f"curl -sf --cacert {pki}/ca.pem -X POST https://127.0.0.1:8443/api/v1/users/created -d '{{}}'")

    general = json.loads(machine.succeed(
        f"curl -sf {hs}/_matrix/client/v3/directory/room/%23fleet-general%3Amaubot.test"))["room_id"]

    with subtest("created: the member is force-joined through the admin room"):
        body, status = lifecycle("created", "${member}")
        assert status == "200", (status, body)
        assert "admin room" in json.loads(body)["note"], body
        token = json.loads(login("${member}", "${memberPassword}"))["access_token"]
        machine.wait_until_succeeds(
            f"curl -sf -H 'Authorization: Bearer {token}' {hs}/_matrix/client/v3/joined_rooms"
            f" | jq -e --arg room '{general}' '.joined_rooms | index($room)'",
            timeout=60,
        )

    with subtest("revoked: the account is deactivated, and the answer says there is no erase"):
        body, status = lifecycle("revoked", "${member}")
        assert status == "200", (status, body)
        assert "erase" in json.loads(body)["note"], body
        machine.wait_until_succeeds(
            f"curl -s -X POST {hs}/_matrix/client/v3/login -d '{login_body('${member}', '${memberPassword}')}'"
            + " | jq -e '.errcode == \"M_USER_DEACTIVATED\" or .errcode == \"M_FORBIDDEN\"'",
            timeout=60,
        )
  '';
}
