#!/usr/bin/env python3
"""Checks on the Nix side that need no nixpkgs: every .nix file parses (Debian's nix-instantiate), flake.lock is
a well-formed version-7 lock whose inputs match flake.nix, Nix itself accepts the lock, and the sops test secrets
decrypt with the test key to the values the VM tests expect.

Prints `N passed, N failed`.
"""
import json
import os
import re
import subprocess
import sys
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
from checks import check, summary  # noqa: E402
ENV = dict(os.environ, NIX_CONFIG="substituters =\nexperimental-features = nix-command flakes\nfsync-metadata = false")


def nix_files():
    tracked = subprocess.run(["git", "-C", ROOT, "ls-files", "*.nix"], capture_output=True, text=True).stdout.split()
    return sorted(set(tracked) | {os.path.relpath(os.path.join(d, f), ROOT)
                                  for d, _, fs in os.walk(ROOT) if "/target" not in d and "/.git" not in d
                                  for f in fs if f.endswith(".nix")})


def main():
    for path in nix_files():
        proc = subprocess.run(["nix-instantiate", "--parse", os.path.join(ROOT, path)], capture_output=True, text=True,
                              env=ENV)
        check(f"parses: {path}", proc.returncode == 0, proc.stderr)

    lock = json.load(open(os.path.join(ROOT, "flake.lock")))
    nodes = lock.get("nodes", {})
    check("flake.lock is version 7 with a root node", lock.get("version") == 7 and lock.get("root") in nodes,
          lock.keys())
    root_inputs = nodes.get(lock.get("root"), {}).get("inputs", {})
    flake = open(os.path.join(ROOT, "flake.nix")).read()
    declared = set(re.findall(r"^    ([a-z-]+)(?:\.url| = \{)", flake, re.M))
    check("flake.lock has exactly the inputs flake.nix declares", set(root_inputs) == declared, (root_inputs, declared))
    for name, node in nodes.items():
        if name == lock["root"]:
            continue
        locked = node.get("locked", {})
        check(f"lock entry {name} is pinned (rev, narHash, lastModified)",
              re.fullmatch(r"[0-9a-f]{40}", locked.get("rev", "")) is not None
              and re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", locked.get("narHash", "")) is not None
              and isinstance(locked.get("lastModified"), int), locked)
        for input_name, target in node.get("inputs", {}).items():
            ok = (target in nodes) if isinstance(target, str) else (
                isinstance(target, list) and target and target[0] in root_inputs)
            check(f"lock entry {name}: input {input_name} resolves", ok, target)
    nixpkgs = nodes.get("nixpkgs", {})
    check("nixpkgs follows the current stable branch (nixos-26.05)",
          nixpkgs.get("original", {}).get("ref") == "nixos-26.05", nixpkgs.get("original"))
    check("sops-nix follows our nixpkgs", nodes.get("sops-nix", {}).get("inputs", {}).get("nixpkgs") == ["nixpkgs"])

    proc = subprocess.run(["nix", "flake", "metadata", "--json", ROOT], capture_output=True, text=True, env=ENV)
    meta = json.loads(proc.stdout) if proc.returncode == 0 else {}
    check("nix accepts flake.nix and flake.lock (nix flake metadata)",
          meta.get("locks", {}).get("nodes", {}).get("nixpkgs", {}).get("locked", {}).get("rev")
          == nixpkgs.get("locked", {}).get("rev"), proc.stderr[-500:])

    secrets = subprocess.run(["bash", "-c", 'source "$0"; decrypt', os.path.join(HERE, "sops-decrypt.sh")],
                             capture_output=True, text=True, cwd=ROOT)
    check("the sops test secrets decrypt with the test key",
          secrets.returncode == 0 and "registration-token: maubot-vm-test-registration-token" in secrets.stdout
          and "admin-password-hash: $2b$12$" in secrets.stdout, secrets.stderr[-500:])
    encrypted = open(os.path.join(ROOT, "secrets", "test-secrets.yaml")).read()
    check("the committed test secrets are encrypted", "maubot-vm-test-registration-token" not in encrypted
          and "ENC[AES256_GCM" in encrypted)

    # The package (nixos-modules/package.nix) builds from a file set: Cargo's build script and the files it reads
    # must be in it, or the Nix build fails where nothing here can build it.
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        build_script = tomllib.load(f)["package"].get("build")
    needed = [build_script] if build_script else []
    if build_script:
        script = open(os.path.join(ROOT, build_script)).read()
        needed += re.findall(r'const \w+: &str = "([^"]+)";', script)
    package = open(os.path.join(ROOT, "nixos-modules", "package.nix")).read()
    check("the Nix package's source has Cargo's build script and the files it reads",
          needed and all(f"../{path}" in package for path in needed), needed)

    return summary()


if __name__ == "__main__":
    sys.exit(main())
