#!/usr/bin/env python3
"""Lints what the NixOS VM tests embed the way nixpkgs will when it builds them, so that a VM test never fails on a
real builder for want of a blank line:

- every `pkgs.writers.writePython3Bin NAME { flakeIgnore = [...]; } (builtins.readFile FILE)` in tests/nixos/*.nix:
  the script as the writer produces it (an interpreter line, then the file) is checked with
  `flake8 --show-source --ignore <flakeIgnore>`, exactly the writer's check (which drops flake8's default ignore
  list whenever flakeIgnore is not empty);
- every example bot in examples/*.py, as docs/nixos.md builds it (writePython3Bin, flakeIgnore = [ "E265" ]);
- every `testScript`: pyflakes, with the driver's symbols and the node names as builtins, as the test driver does
  (its mypy check needs the driver's own type stubs and is not repeated here).

flake8 comes from PyPI into a cached virtualenv. Prints `N passed, N failed`.
"""
import glob
import os
import re
import subprocess
import sys
import tempfile
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
from checks import check, summary  # noqa: E402

CACHE = os.environ.get("MAUBOT_CACHE_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "maubot-dev")
VENV = os.path.join(CACHE, "lint-venv")
# What nixpkgs' test driver puts into the script's namespace (its generate-driver-symbols), besides node names.
DRIVER_SYMBOLS = ["start_all", "test_script", "machines", "vlans", "driver", "log", "os", "create_machine",
                  "subtest", "run_tests", "join_all", "retry", "serial_stdout_off", "serial_stdout_on",
                  "polling_condition", "Machine", "t", "dump_machine_ssh"]
WRITER = re.compile(r'writePython3Bin\s+"([^"]+)"\s*\{(.*?)\}\s*\(\s*builtins\.readFile\s+([^\s)]+)\s*\)', re.S)


def tools():
    flake8 = os.path.join(VENV, "bin", "flake8")
    if not os.path.exists(flake8):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "--quiet", "--disable-pip-version-check",
                        "flake8"], check=True)
    return flake8, os.path.join(VENV, "bin", "pyflakes")


def nix_string_bindings(text):
    """`name = "value";` bindings, to stand in for `${name}` in test scripts."""
    return dict(re.findall(r'^\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*"([^"$]*)"\s*;', text, re.M))


def test_script(text):
    """The testScript of a VM test file, its indentation stripped and `${name}` replaced as Nix would."""
    match = re.search(r"testScript\s*=\s*''\n(.*?)\n\s*'';", text, re.S)
    if not match:
        return None
    script = textwrap.dedent(match.group(1))
    bindings = nix_string_bindings(text)
    return re.sub(r"\$\{([A-Za-z][A-Za-z0-9_]*)\}", lambda m: bindings.get(m.group(1), m.group(0)), script)


def main():
    flake8, pyflakes = tools()
    tests = sorted(glob.glob(os.path.join(ROOT, "tests", "nixos", "*.nix")))
    check("there are VM tests to lint", bool(tests))
    for path in tests:
        name = os.path.relpath(path, ROOT)
        text = open(path).read()
        for binary, attrs, source in WRITER.findall(text):
            ignore = re.findall(r'"([A-Z][0-9]+)"', re.search(r"flakeIgnore\s*=\s*\[(.*?)\]", attrs, re.S).group(1)
                                if "flakeIgnore" in attrs else "")
            script = os.path.normpath(os.path.join(os.path.dirname(path), source))
            with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as out:
                out.write("#! /nix/store/00000000000000000000000000000000-python3/bin/python3\n")
                out.write(open(script).read())
            args = [flake8, "--show-source"] + (["--ignore", ",".join(ignore)] if ignore else []) + [out.name]
            result = subprocess.run(args, capture_output=True, text=True)
            os.unlink(out.name)
            check(f"{name}: {binary} passes writePython3Bin's flake8 check ({' '.join(args[1:-1])})",
                  result.returncode == 0, result.stdout + result.stderr)
        script = test_script(text)
        check(f"{name}: has a testScript", script is not None)
        if script is None:
            continue
        unresolved = re.findall(r"\$\{[^}]*\}", script)
        check(f"{name}: every interpolation in the testScript is known", not unresolved, unresolved)
        nodes = re.findall(r"^\s*nodes\.([A-Za-z0-9_-]+)\s*=", text, re.M)
        builtins = ",".join(DRIVER_SYMBOLS + [n.replace("-", "_") for n in nodes] + ["machine"])
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as out:
            out.write(script)
        result = subprocess.run([pyflakes, out.name], capture_output=True, text=True,
                                env=dict(os.environ, PYFLAKES_BUILTINS=builtins))
        os.unlink(out.name)
        check(f"{name}: the testScript passes pyflakes as the test driver runs it", result.returncode == 0,
              result.stdout + result.stderr)
    # The example bots, as docs/nixos.md builds them: writePython3Bin with flakeIgnore = [ "E265" ] (each keeps its
    # own `#!` line, so that the tests can run it directly).
    examples = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))
    check("there are example bots to lint", bool(examples))
    for path in examples:
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as out:
            out.write("#! /nix/store/00000000000000000000000000000000-python3/bin/python3\n")
            out.write(open(path).read())
        args = [flake8, "--show-source", "--ignore", "E265", out.name]
        result = subprocess.run(args, capture_output=True, text=True)
        os.unlink(out.name)
        check(f"{os.path.relpath(path, ROOT)} passes writePython3Bin's flake8 check (--ignore E265)",
              result.returncode == 0, result.stdout + result.stderr)
    return summary()


if __name__ == "__main__":
    sys.exit(main())
