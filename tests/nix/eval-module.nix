# Evaluates nixos-modules/maubot.nix with nixpkgs' lib and stand-ins (stubs.nix), and renders what NixOS would
# install: the unit file, the settings file and the maubot-setup script.
#
#   nix-instantiate --eval --strict --json tests/nix/eval-module.nix \
#     --arg lib 'import /path/to/nixpkgs.lib/lib' --arg configuration ./tests/nix/example-configuration.nix
{
  lib,
  configuration ? ./example-configuration.nix,
  checkConfig ? false,
  # Leave `package` to the module's own default (nixos-modules/package.nix), as without the flake.
  defaultPackage ? false,
}:
let
  stubs = import ./stubs.nix { inherit lib; };
  evaluated = lib.evalModules {
    modules = [
      ../../nixos-modules/maubot.nix
      stubs.module
      configuration
      { services.maubot.checkConfig = lib.mkDefault checkConfig; }
      (lib.optionalAttrs (!defaultPackage) { services.maubot.package = lib.mkDefault stubs.package; })
    ];
    specialArgs.pkgs = stubs.pkgs;
  };
  config = evaluated.config;
  service = config.systemd.services.maubot or null;

  # systemd's unit syntax, as NixOS renders it: booleans as true/false, lists as repeated keys.
  renderValue = v: if builtins.isBool v then lib.boolToString v else toString v;
  renderKey =
    key: value:
    map (v: "${key}=${renderValue v}") (if builtins.isList value then value else [ value ]);
  renderSection =
    name: attrs:
    "[${name}]\n"
    + lib.concatStrings (
      lib.concatLists (
        lib.mapAttrsToList (k: v: map (line: line + "\n") (renderKey k v)) (
          lib.filterAttrs (_: v: v != [ ] && v != null) attrs
        )
      )
    );
  unitText = lib.concatStringsSep "\n" [
    (renderSection "Unit" {
      Description = service.description;
      Documentation = service.documentation or [ ];
      Wants = service.wants or [ ];
      After = service.after or [ ];
      StartLimitBurst = service.startLimitBurst or null;
      StartLimitIntervalSec = service.startLimitIntervalSec or null;
      # NixOS writes the triggers into a file; the harness shows what they are.
      X-Reload-Triggers = map toString (service.reloadTriggers or [ ]);
    })
    (renderSection "Service" service.serviceConfig)
    (renderSection "Install" { WantedBy = service.wantedBy or [ ]; })
  ];
  package = name: lib.findFirst (p: (p.name or "") == name) null config.environment.systemPackages;
  setupPackage = package "maubot-setup";
  ctlPackage = package "maubot-ctl";
in
{
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;
  unit = if service == null then null else unitText;
  settingsPath = toString config.services.maubot.settingsFile;
  settings =
    if config.services.maubot.enable && !checkConfig then
      builtins.readFile config.services.maubot.settingsFile
    else
      null;
  checkScript = if checkConfig then config.services.maubot.settingsFile.script else null;
  setupScript = if setupPackage == null then null else setupPackage.text;
  ctlScript = if ctlPackage == null then null else ctlPackage.text;
  etc = lib.mapAttrs (_: file: toString file.source) config.environment.etc;
  users = builtins.attrNames config.users.users;
  packageName = config.services.maubot.package.name;
  firewall = config.networking.firewall.allowedTCPPorts;
  backup =
    let
      backupService = config.systemd.services.maubot-backup or null;
    in
    if backupService == null then
      null
    else
      {
        service = backupService.serviceConfig;
        inherit (backupService) script;
        timer = config.systemd.timers.maubot-backup.timerConfig;
        tmpfiles = config.systemd.tmpfiles.rules;
      };
}
