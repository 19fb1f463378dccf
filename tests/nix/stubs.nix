# Stand-ins for the few NixOS options and packages services.maubot touches, so that the module can be evaluated
# with nixpkgs' `lib` alone (no nixpkgs tree is available here). Option types are real, so types and assertions
# are enforced as in NixOS.
{ lib }:
let
  inherit (lib) mkOption types;

  # As nixpkgs' pkgs.formats.json: a JSON value type and a generator that writes a file.
  jsonFormat = {
    type =
      let
        valueType =
          types.nullOr (
            types.oneOf [
              types.bool
              types.int
              types.float
              types.str
              types.path
              (types.attrsOf valueType)
              (types.listOf valueType)
            ]
          )
          // {
            description = "JSON value";
          };
      in
      valueType;
    generate = name: value: builtins.toFile name (builtins.toJSON value);
  };

  # A derivation-shaped value at a fixed store path (nothing can be built here).
  fakeDerivation = hash: name: extra: {
    type = "derivation";
    inherit name;
    outPath = "${builtins.storeDir}/${hash}-${name}";
  } // extra;
in
{
  pkgs = {
    formats.json = _: jsonFormat;
    systemd = {
      outPath = "/usr";
    };
    coreutils = {
      outPath = "/usr";
    };
    yt-dlp = fakeDerivation "0yt0d1p0000000000000000000000000" "yt-dlp-2026.11.23" { meta.mainProgram = "yt-dlp"; };
    ffmpeg-headless = fakeDerivation "0ffmpeg00000000000000000000000000" "ffmpeg-headless-7.1" { };
    # Enough of callPackage for nixos-modules/package.nix (the module's default package), with a builder that
    # builds nothing.
    callPackage =
      path: overrides:
      import path (
        {
          inherit lib;
          cmake = { };
          rustPlatform.buildRustPackage =
            attrs:
            fakeDerivation "0d3fau1tpackage00000000000000000" "${attrs.pname}-${attrs.version}" {
              inherit (attrs) passthru meta;
            };
        }
        // overrides
      );
    runCommand =
      name: env: script:
      fakeDerivation "0c0nf1gch3ck00000000000000000000" name { inherit env script; };
    writeShellScriptBin =
      name: text:
      fakeDerivation "0wr1s3sh3llscr1p0000000000000000" name { inherit text; };
    gnugrep = {
      outPath = "/usr";
    };
  };

  # The package the golden unit refers to; tests/systemd/nspawn-test.sh installs the real binary there.
  package = fakeDerivation "5qxq6pj1y1z0h7rg8l4m9r7s0v3b2c1a" "maubot-0.1.0" { passthru.maubotRust = true; };
  # nixpkgs' Python maubot, as far as the module can tell.
  pythonMaubot = fakeDerivation "0pyth0nmaub0t000000000000000000" "maubot-0.5.2" { pythonModule = { }; };

  module =
    { ... }:
    {
      options = {
        assertions = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        warnings = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        users.users = mkOption {
          type = types.attrsOf types.anything;
          default = { };
        };
        users.groups = mkOption {
          type = types.attrsOf types.anything;
          default = { };
        };
        environment.systemPackages = mkOption {
          type = types.listOf types.anything;
          default = [ ];
        };
        environment.etc = mkOption {
          type = types.attrsOf types.anything;
          default = { };
        };
        networking.firewall.allowedTCPPorts = mkOption {
          type = types.listOf types.port;
          default = [ ];
        };
        systemd.services = mkOption {
          type = types.attrsOf types.anything;
          default = { };
        };
        systemd.timers = mkOption {
          type = types.attrsOf types.anything;
          default = { };
        };
        systemd.tmpfiles.rules = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        # Homeservers the module looks for on the same host.
        services.matrix-synapse = mkOption {
          type = types.anything;
          default = { };
        };
        services.matrix-continuwuity = mkOption {
          type = types.anything;
          default = { };
        };
      };
    };
}
