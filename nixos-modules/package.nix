# The maubot daemon built from this repository: the module's default `services.maubot.package`, and the flake's
# `packages.<system>.maubot`. (nixpkgs' `pkgs.maubot` is the Python maubot, a different program.)
{
  lib,
  rustPlatform,
  cmake,
}:
let
  root = ../.;
  cargoToml = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "maubot";
  inherit (cargoToml.package) version;
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../tests
      # Cargo's build script (Cargo.toml `build`) and the link order it gives lld.
      ../scripts/link-order.rs
      ../scripts/hot-code.txt
      # Served by the management API (include_str! in src/api/mod.rs).
      ../docs/management-api.yaml
    ];
  };
  cargoLock.lockFile = ../Cargo.lock;
  # aws-lc-sys (rustls' crypto provider) may fall back to CMake.
  nativeBuildInputs = [ cmake ];
  dontUseCmakeConfigure = true;
  # The unit tests run here; the integration tests need a live Synapse and run in CI (scripts/test.sh).
  cargoTestFlags = [ "--lib" ];
  # How the module tells this daemon from nixpkgs' Python maubot.
  passthru.maubotRust = true;
  meta = {
    inherit (cargoToml.package) description;
    license = lib.licenses.agpl3Plus;
    mainProgram = "maubot";
    platforms = lib.platforms.linux;
  };
}
