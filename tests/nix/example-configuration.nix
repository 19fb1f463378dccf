# The configuration the real-systemd test deploys (tests/systemd/) and the golden unit is rendered from.
# Secrets are where sops-nix puts them (/run/secrets/...); the test writes them there.
{
  services.maubot = {
    enable = true;
    homeserverUrl = "http://127.0.0.1:8008";
    serverName = "maubot.test";
    registrationSharedSecretFile = "/run/secrets/maubot/registration-shared-secret";
    adminPasswordHashFile = "/run/secrets/maubot/admin-password-hash";
    secretKeyFile = "/run/secrets/maubot/secret-key";
    settings.logging.level = "info,maubot=debug";
    instances.ping = {
      type = "ping";
      user = "@pingbot:maubot.test";
      config.allow_invites_from = [ "@*:maubot.test" ];
    };
  };
}
