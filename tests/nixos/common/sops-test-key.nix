# sops-nix in the VM tests: the test secrets, and the public TEST age key put where sops-install-secrets looks
# for it just before it runs (works with the scripted and the systemd initrd alike). With systemd activation the
# secrets come from sops-install-secrets.service: the bot host and the homeserver start after it.
{ ... }:
{
  sops = {
    defaultSopsFile = ../../../secrets/test-secrets.yaml;
    age.keyFile = "/run/age-keys.txt";
    useSystemdActivation = true;
  };
  systemd.services.sops-install-secrets.preStart = ''
    install -m 0400 ${../../../secrets/test-age-key.txt} /run/age-keys.txt
  '';
  systemd.services.maubot = {
    wants = [ "sops-install-secrets.service" ];
    after = [ "sops-install-secrets.service" ];
  };
  systemd.services.continuwuity = {
    wants = [ "sops-install-secrets.service" ];
    after = [ "sops-install-secrets.service" ];
  };
}
