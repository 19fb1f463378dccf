#!/usr/bin/env python3
"""Writes a throwaway Synapse config for tests, the demo and the benchmark, and generates its signing key.

Usage: synapse-config.py DATA_DIR PORT SHARED_SECRET [SERVER_NAME] [--default-rate-limits]

Loopback only, SQLite, shared-secret registration, token-gated open registration, and rate limits relaxed so
that tests measure the bots rather than Synapse's throttling; with --default-rate-limits, Synapse's own limits
stay (the tests that show the bots live within them). Run it with the Synapse venv's python.
"""
import os
import secrets
import subprocess
import sys

args = [a for a in sys.argv[1:] if not a.startswith("--")]
default_limits = "--default-rate-limits" in sys.argv[1:]
data, port, shared_secret = args[0], int(args[1]), args[2]
server_name = args[3] if len(args) > 3 else "maubot.test"
os.makedirs(data, exist_ok=True)

relaxed = "{per_second: 10000, burst_count: 10000}"
config = f"""
server_name: "{server_name}"
public_baseurl: "http://127.0.0.1:{port}/"
pid_file: "{data}/homeserver.pid"
listeners:
  - port: {port}
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: "{data}/homeserver.db"
log_config: "{data}/log.yaml"
media_store_path: "{data}/media_store"
signing_key_path: "{data}/signing.key"
trusted_key_servers: []
suppress_key_server_warning: true
report_stats: false
registration_shared_secret: "{shared_secret}"
enable_registration: true
registration_requires_token: true
macaroon_secret_key: "{secrets.token_hex(32)}"
form_secret: "{secrets.token_hex(32)}"
presence:
  enabled: false
url_preview_enabled: false
enable_metrics: false
federation_domain_whitelist: []
"""
relaxed_limits = f"""
rc_message: {relaxed}
rc_registration: {relaxed}
rc_registration_token_validity: {relaxed}
rc_login:
  address: {relaxed}
  account: {relaxed}
  failed_attempts: {relaxed}
rc_joins:
  local: {relaxed}
  remote: {relaxed}
rc_joins_per_room: {relaxed}
rc_invites:
  per_room: {relaxed}
  per_user: {relaxed}
  per_issuer: {relaxed}
rc_admin_redaction: {relaxed}
rc_key_requests: {relaxed}
rc_3pid_validation: {relaxed}
rc_room_creation: {relaxed}
rc_presence:
  per_user: {relaxed}
"""
if not default_limits:
    config += relaxed_limits
with open(f"{data}/homeserver.yaml", "w") as f:
    f.write(config)

log = f"""
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: "{data}/homeserver.log"
    filters: [context]
filters:
  context:
    (): synapse.logging.context.LoggingContextFilter
    request: ""
loggers:
  synapse.storage.SQL:
    level: WARNING
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
"""
with open(f"{data}/log.yaml", "w") as f:
    f.write(log)

subprocess.run(
    [sys.executable, "-m", "synapse.app.homeserver", "-c", f"{data}/homeserver.yaml", "--generate-keys"],
    check=True,
    stdout=subprocess.DEVNULL,
)
