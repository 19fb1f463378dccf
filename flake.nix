{
  description = "maubot: a NixOS-first host for Matrix bots, in Rust";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    sops-nix = {
      url = "github:Mic92/sops-nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      sops-nix,
    }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      # The same package expression the module uses by default (nixos-modules/package.nix).
      maubotPackage = pkgs: pkgs.callPackage ./nixos-modules/package.nix { };

      # Every file in tests/nixos/ is a VM test: a function of this flake's inputs returning a test module.
      vmTests =
        pkgs:
        lib.mapAttrs' (
          name: _:
          lib.nameValuePair "vm-${lib.removeSuffix ".nix" name}" (
            pkgs.testers.runNixOSTest (import (./tests/nixos + "/${name}") { inherit self sops-nix; })
          )
        ) (lib.filterAttrs (name: type: type == "regular" && lib.hasSuffix ".nix" name) (builtins.readDir ./tests/nixos));
    in
    {
      packages = forAllSystems (pkgs: rec {
        maubot = maubotPackage pkgs;
        default = maubot;
      });

      nixosModules = rec {
        maubot =
          { lib, pkgs, ... }:
          {
            imports = [ ./nixos-modules/maubot.nix ];
            services.maubot.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.maubot;
          };
        default = maubot;
      };

      checks = forAllSystems (
        pkgs:
        vmTests pkgs
        // {
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.maubot;
          # `maubot check-config` on the example configuration, as `nixos-rebuild` runs it, after the module's
          # assertions (which a settings file alone would not evaluate) have passed.
          check-config-example =
            let
              system = lib.nixosSystem {
                modules = [
                  self.nixosModules.default
                  ./tests/nix/example-configuration.nix
                  {
                    nixpkgs.hostPlatform = pkgs.stdenv.hostPlatform.system;
                    boot.loader.grub.enable = false;
                    fileSystems."/".device = "none";
                    system.stateVersion = "26.05";
                  }
                ];
              };
              failed = map (a: a.message) (lib.filter (a: !a.assertion) system.config.assertions);
            in
            if failed != [ ] then
              throw "check-config-example: failed assertions:\n- ${lib.concatStringsSep "\n- " failed}"
            else
              system.config.services.maubot.settingsFile;
        }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.maubot ];
          packages = with pkgs; [
            cargo
            clippy
            rustfmt
            rust-analyzer
            sqlite
            python3
            sops
            age
            nixfmt
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
