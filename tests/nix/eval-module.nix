# Evaluates nixos-modules/maubot.nix with nixpkgs' lib and stand-ins (stubs.nix), and renders what NixOS would
# install: the unit file, the settings file and the maubot-setup script.
#
#   nix-instantiate --eval --strict --json tests/nix/eval-module.nix \
#     --arg lib 'import /path/to/nixpkgs.lib/lib' --arg configuration ./tests/nix/example-configuration.nix
{
  lib,
  configuration ? ./example-configuration.nix,
  checkConfig ? false,
}:
let
  stubs = import ./stubs.nix { inherit lib; };
  evaluated = lib.evalModules {
    modules = [
      ../../nixos-modules/maubot.nix
      stubs.module
      configuration
      {
        services.maubot.package = lib.mkDefault stubs.package;
        services.maubot.checkConfig = lib.mkDefault checkConfig;
      }
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
    })
    (renderSection "Service" service.serviceConfig)
    (renderSection "Install" { WantedBy = service.wantedBy or [ ]; })
  ];
  setupPackage = lib.findFirst (p: (p.name or "") == "maubot-setup") null config.environment.systemPackages;
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
  users = builtins.attrNames config.users.users;
  firewall = config.networking.firewall.allowedTCPPorts;
}
