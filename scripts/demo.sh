#!/usr/bin/env bash
# The local demo: a real Synapse on loopback, `maubot setup`, `maubot run`, and a person who sends `!ping` and
# gets the bot's `pong`. Everything lives in a throwaway directory and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=$(bash scripts/install-synapse.sh)
echo "==> building maubot (release; the first build takes a while)"
cargo build --release --quiet
maubot=$PWD/target/release/maubot

work=$(mktemp -d -t maubot-demo-XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Free ports for everything, so that the demo runs beside another maubot or homeserver on this machine.
free_port() { "$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
api_port=$(free_port)
secret=$("$venv/bin/python" -c 'import secrets; print(secrets.token_hex(16))')
echo "==> starting Synapse on 127.0.0.1:$port (data in $work/synapse)"
"$venv/bin/python" scripts/synapse-config.py "$work/synapse" "$port" "$secret" maubot.test
"$venv/bin/python" -m synapse.app.homeserver -c "$work/synapse/homeserver.yaml" >"$work/synapse/stdout.log" 2>&1 &
pids+=($!)
healthy() { "$venv/bin/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2>/dev/null; }
for _ in $(seq 1 300); do healthy && break; sleep 0.2; done
healthy || { echo "Synapse did not start; see $work/synapse/homeserver.log"; exit 1; }

# The bot's secrets arrive the way systemd's LoadCredential= delivers them.
mkdir -m 700 "$work/credentials"
printf '%s\n' "$secret" >"$work/credentials/registration-shared-secret"
cat >"$work/config.yaml" <<YAML
state_dir: $work/state
server:
  port: $api_port
homeservers:
  local:
    url: http://127.0.0.1:$port
    registration_shared_secret: {credential: registration-shared-secret}
instances:
  ping:
    type: ping
    user: "@pingbot:maubot.test"
    config:
      allow_invites_from: ["@*:maubot.test"]
YAML
export CREDENTIALS_DIRECTORY=$work/credentials

echo "==> maubot check-config"
"$maubot" --config "$work/config.yaml" check-config
echo "==> maubot run before setup (refuses, exit 78)"
"$maubot" --config "$work/config.yaml" run 2>&1 | tail -1 || true
echo "==> maubot setup (registers the bot, bootstraps E2EE, shows the recovery key once)"
if ! "$maubot" --config "$work/config.yaml" setup 2>"$work/setup.log"; then
  echo "==> setup failed; its log:"
  cat "$work/setup.log"
  exit 1
fi
echo "==> maubot run (management API on 127.0.0.1:$api_port)"
"$maubot" --config "$work/config.yaml" run 2>"$work/run.log" &
pids+=($!)
if ! "$venv/bin/python" scripts/demo_client.py "http://127.0.0.1:$port" "$secret" "@pingbot:maubot.test"; then
  echo "==> the demo failed; the bot's log:"
  cat "$work/run.log"
  exit 1
fi
echo "==> done; the bot's log:"
tail -5 "$work/run.log"
