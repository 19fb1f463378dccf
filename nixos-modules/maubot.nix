# services.maubot: the Rust maubot daemon, deployed the NixOS way.
#
# The module renders the daemon's own config schema (docs/configuration.md) into an override file at a stable
# path (/etc/maubot/settings.json), hands every secret to the units with LoadCredential= (never through the Nix
# store), checks the rendered config at build time with `maubot check-config`, and runs `maubot run` as a
# hardened Type=notify service that a changed config reloads (SIGHUP) instead of restarting. `maubot-setup` runs
# `maubot setup` with the same identity, credentials and config, then reloads the service so new bots start;
# `maubot-ctl` runs any other mode the same way (`maubot-ctl check-config`). The service itself never receives
# the bots' passwords or registration secrets: only setup uses them.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    all
    concatMapAttrs
    concatMapStrings
    concatStringsSep
    escapeShellArg
    filterAttrs
    hasPrefix
    literalExpression
    mapAttrs
    mapAttrsToList
    mkEnableOption
    mkIf
    mkOption
    optional
    optionalAttrs
    optionalString
    optionals
    types
    ;

  cfg = config.services.maubot;
  json = pkgs.formats.json { };

  # Plugin types built into the daemon (src/plugin/registry.rs).
  knownTypes = [
    "ping"
    "exec"
    "space"
    "guard"
    "github"
    "media"
  ];

  # The homeserver the top-level options describe, by its key in `homeservers`.
  homeserverKey = "default";

  # A file that is read by systemd, not copied into the store. `types.externalPath` (nixpkgs >= 25.11) rejects
  # store paths; older nixpkgs fall back to `types.path` and the assertion below.
  secretPath = types.externalPath or types.path;
  secretFileOption =
    description:
    mkOption {
      type = types.nullOr secretPath;
      default = null;
      example = "/run/secrets/maubot/secret";
      description = "${description} Read by systemd (LoadCredential=) at start; never copied into the Nix store.";
    };

  listenerModule = {
    options = {
      address = mkOption {
        type = types.str;
        default = "127.0.0.1";
        example = "0.0.0.0";
        description = "IP address the listener binds (`0.0.0.0` or `::` for every interface).";
      };
      port = mkOption {
        type = types.port;
        example = 8443;
        description = "TCP port of the listener.";
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open `port` in the firewall.";
      };
      tls = mkOption {
        type = types.nullOr (
          types.submodule {
            options = {
              certificateFile = mkOption {
                type = types.path;
                example = "/var/lib/acme/bots.example.org/fullchain.pem";
                description = "PEM certificate chain (public; readable by the maubot user, e.g. an ACME certificate with `group = \"maubot\"`).";
              };
              keyFile = secretFileOption "PEM private key of the certificate.";
              clientCaFile = mkOption {
                type = types.nullOr types.path;
                default = null;
                description = "PEM CA certificate(s): when set, every client must present a certificate that chains to it; the plugin sees the certificate's common name.";
              };
            };
          }
        );
        default = null;
        description = "TLS (rustls); plain HTTP when null (on loopback, or behind a reverse proxy with TLS).";
      };
    };
  };

  # Credential name of a listener's private key.
  listenerKeyCredential = id: index: "${id}-listener-${toString index}-key";
  # Credential name of the public listener's private key.
  publicListenerKeyCredential = "public-listener-key";

  # A listener as the daemon's config writes it; `keyCredential` names its private key's credential.
  renderListener =
    keyCredential: listener:
    {
      inherit (listener) address port;
    }
    // optionalAttrs (listener.tls != null) {
      tls = {
        certificate = toString listener.tls.certificateFile;
        private_key = credential keyCredential;
      }
      // optionalAttrs (listener.tls.clientCaFile != null) { client_ca = toString listener.tls.clientCaFile; };
    };

  instanceModule =
    { name, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
          description = "Whether this bot runs. A disabled bot keeps its state.";
        };
        type = mkOption {
          type = types.str;
          example = "ping";
          description = "Plugin type. Known: ${concatStringsSep ", " knownTypes}.";
        };
        user = mkOption {
          type = types.str;
          example = "@ping:example.org";
          description = "The bot's Matrix user ID.";
        };
        homeserver = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Key of a `settings.homeservers` entry; null uses the homeserver of `homeserverUrl`.";
        };
        deviceName = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Display name of the bot's device (default `maubot <id>`).";
        };
        serverAdmin = mkOption {
          type = types.bool;
          default = false;
          description = ''
            `maubot setup` registers the bot as a server admin (Synapse's shared-secret registration), which the
            `space` plugin needs to force-join and deactivate users. An account that exists already is not changed.
          '';
        };
        roomSubscriptions = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "!abc123:example.org" ];
          description = "When not empty, the bot acts only in these rooms (room IDs).";
        };
        passwordFile = secretFileOption "File with the bot's password (credential `${name}-password`).";
        accessTokenFile = secretFileOption "File with an existing access token to adopt (credential `${name}-access-token`).";
        secretFiles = mkOption {
          type = types.attrsOf secretPath;
          default = { };
          example = literalExpression ''{ webhook-secret = "/run/secrets/github-webhook"; }'';
          description = ''
            Plugin secrets: each becomes credential `${name}-<key>`, to be referenced in `config` as
            `{ credential = "${name}-<key>"; }`.
          '';
        };
        config = mkOption {
          type = json.type;
          default = { };
          example = literalExpression ''{ allow_invites_from = [ "@*:example.org" ]; }'';
          description = "Plugin settings (docs/plugins.md). Secrets only as `{ credential = NAME; }`.";
        };
        listeners = mkOption {
          type = types.listOf (types.submodule listenerModule);
          default = [ ];
          example = literalExpression ''[ { address = "0.0.0.0"; port = 8443; openFirewall = true; tls = { certificateFile = "/var/lib/acme/bots.example.org/fullchain.pem"; keyFile = "/run/secrets/bots-key"; clientCaFile = ./deploy-ca.pem; }; } ]'';
          description = ''
            Listeners of the bot's own for its plugin's HTTP routes (docs/plugins.md, "HTTP"), started and
            stopped with the bot; the routes are also reachable under the management API at `/_plugins/<id>/`.
          '';
        };
        exec = {
          package = mkOption {
            type = types.nullOr types.package;
            default = null;
            example = literalExpression ''pkgs.writers.writePython3Bin "echo-bot" { } (builtins.readFile ./echo-bot.py)'';
            description = ''
              For `type = "exec"`: the bot program (docs/exec.md). Its main program (`lib.getExe`) becomes
              `config.command`.
            '';
          };
          args = mkOption {
            type = types.listOf types.str;
            default = [ ];
            description = "For `type = \"exec\"`: the program's arguments (`config.args`).";
          };
        };
        media = {
          ytDlpPackage = lib.mkPackageOption pkgs "yt-dlp" { } // {
            description = "For `type = \"media\"`: the yt-dlp that fetches links (`config.yt_dlp`, unless set there).";
          };
          ffmpegPackage = lib.mkPackageOption pkgs "ffmpeg-headless" { nullable = true; } // {
            description = "For `type = \"media\"`: ffmpeg and ffprobe for thumbnails and the media's size and length (`config.ffmpeg`, `config.ffprobe`); null posts without thumbnails.";
          };
        };
      };
    };

  # Credential name -> file. The service loads what a running host reads; setup loads everything.
  runCredentials =
    optionalAttrs (cfg.adminPasswordHashFile != null) { "admin-${cfg.adminUser}" = cfg.adminPasswordHashFile; }
    // optionalAttrs (cfg.secretKeyFile != null) { secret-key = cfg.secretKeyFile; }
    // optionalAttrs (cfg.publicListener != null && cfg.publicListener.tls != null && cfg.publicListener.tls.keyFile != null) {
      ${publicListenerKeyCredential} = cfg.publicListener.tls.keyFile;
    }
    // concatMapAttrs (
      id: instance: lib.mapAttrs' (key: file: lib.nameValuePair "${id}-${key}" file) instance.secretFiles
    ) cfg.instances
    // concatMapAttrs (
      id: instance:
      lib.listToAttrs (
        lib.concatLists (
          lib.imap0 (
            index: listener:
            optional (listener.tls != null && listener.tls.keyFile != null) (
              lib.nameValuePair (listenerKeyCredential id index) listener.tls.keyFile
            )
          ) instance.listeners
        )
      )
    ) cfg.instances
    // cfg.credentialFiles;
  setupCredentials =
    runCredentials
    // optionalAttrs (cfg.registrationTokenFile != null) { registration-token = cfg.registrationTokenFile; }
    // optionalAttrs (cfg.registrationSharedSecretFile != null) {
      registration-shared-secret = cfg.registrationSharedSecretFile;
    }
    // concatMapAttrs (
      id: instance:
      optionalAttrs (instance.passwordFile != null) { "${id}-password" = instance.passwordFile; }
      // optionalAttrs (instance.accessTokenFile != null) { "${id}-access-token" = instance.accessTokenFile; }
    ) cfg.instances;
  credential = name: { credential = name; };

  generatedSettings = {
    state_dir = cfg.dataDir;
    # Messages that name the fix say `maubot-setup`, the wrapper this module installs.
    host.setup_command = "maubot-setup";
    server = {
      hostname = cfg.listenAddress;
      inherit (cfg) port;
    }
    // optionalAttrs (cfg.secretKeyFile != null) { secret_key = credential "secret-key"; }
    // optionalAttrs (cfg.publicListener != null) {
      public_listener = renderListener publicListenerKeyCredential cfg.publicListener;
    }
    // optionalAttrs (cfg.trustedProxies != [ ]) { trusted_proxies = cfg.trustedProxies; };
    admins = optionalAttrs (cfg.adminPasswordHashFile != null) {
      ${cfg.adminUser} = credential "admin-${cfg.adminUser}";
    };
    homeservers.${homeserverKey} = {
      url = cfg.homeserverUrl;
    }
    // optionalAttrs (cfg.serverName != null) { server_name = cfg.serverName; }
    // optionalAttrs (cfg.registrationTokenFile != null) { registration_token = credential "registration-token"; }
    // optionalAttrs (cfg.registrationSharedSecretFile != null) {
      registration_shared_secret = credential "registration-shared-secret";
    };
    instances = mapAttrs (
      id: instance:
      {
        inherit (instance) type user;
        config =
          optionalAttrs (instance.type == "media") (
            {
              yt_dlp = lib.getExe' instance.media.ytDlpPackage "yt-dlp";
            }
            // optionalAttrs (instance.media.ffmpegPackage != null) {
              ffmpeg = lib.getExe' instance.media.ffmpegPackage "ffmpeg";
              ffprobe = lib.getExe' instance.media.ffmpegPackage "ffprobe";
            }
          )
          // instance.config
          // optionalAttrs (instance.exec.package != null) {
            command = lib.getExe instance.exec.package;
            inherit (instance.exec) args;
          };
        enabled = instance.enable;
        room_subscriptions = instance.roomSubscriptions;
        homeserver = if instance.homeserver == null then homeserverKey else instance.homeserver;
      }
      // optionalAttrs (instance.listeners != [ ]) {
        listeners = lib.imap0 (index: renderListener (listenerKeyCredential id index)) instance.listeners;
      }
      // optionalAttrs instance.serverAdmin { server_admin = true; }
      // optionalAttrs (instance.deviceName != null) { device_name = instance.deviceName; }
      // optionalAttrs (instance.passwordFile != null) { password = credential "${id}-password"; }
      // optionalAttrs (instance.accessTokenFile != null) { access_token = credential "${id}-access-token"; }
    ) cfg.instances;
  };

  finalSettings = lib.recursiveUpdate generatedSettings cfg.settings;
  settingsFile = json.generate "maubot-settings.json" finalSettings;
  # Where the units read it: a stable path, so that a changed config changes no unit file (it reloads the
  # service, through reloadTriggers) and the setup wrapper of any generation reads the running one's config.
  settingsPath = "/etc/maubot/settings.json";

  # A value that passes every secret check of `check-config` (it is also a bcrypt hash of cost 12 and longer than
  # 32 bytes), so that the build-time check validates everything but the real secrets.
  placeholderSecret = "$2b$12$" + lib.fixedWidthString 53 "A" "";
  checkedSettingsFile =
    pkgs.runCommand "maubot-settings-checked.json"
      {
        nativeBuildInputs = [ cfg.package ];
        preferLocalBuild = true;
      }
      ''
        mkdir credentials
        ${concatStringsSep "\n" (
          mapAttrsToList (
            name: _: "printf '%s' ${escapeShellArg placeholderSecret} > credentials/${escapeShellArg name}"
          ) setupCredentials
        )}
        CREDENTIALS_DIRECTORY=$PWD/credentials maubot --override ${settingsFile} check-config > check-config.txt
        cp ${settingsFile} $out
      '';
  effectiveSettingsFile = if cfg.checkConfig then checkedSettingsFile else settingsFile;

  # Settings of nixpkgs' Python maubot that mean nothing (or something else) to this daemon.
  pythonMaubotKeys =
    lib.filter (key: lib.hasAttrByPath key cfg.settings) [
      [ "crypto_database" ]
      [ "database_opts" ]
      [ "plugin_directories" ]
      [ "plugin_databases" ]
      [ "api_features" ]
      [ "server" "public_url" ]
      [ "server" "ui_base_path" ]
      [ "server" "plugin_base_path" ]
      [ "server" "override_resource_path" ]
      [ "server" "unshared_secret" ]
    ]
    ++ lib.optional (builtins.match "(sqlite|postgres).*:.*" (toString (cfg.settings.database or "")) != null) [
      "database"
    ];

  # Keys whose values are secrets in the daemon's schema: written inline they would land in the Nix store.
  secretKeys = [
    "password"
    "access_token"
    "registration_token"
    "registration_shared_secret"
    "secret_key"
    "secret"
    "webhook_secret"
    "cookies"
  ];
  isReference = value: builtins.isAttrs value && (value ? credential || value ? file);
  inlineSecretPaths =
    let
      walk =
        path: value:
        if builtins.isAttrs value then
          lib.concatLists (
            mapAttrsToList (
              key: child:
              let
                childPath = path ++ [ key ];
                isSecretKey = builtins.elem key secretKeys || (lib.length path == 1 && lib.head path == "admins");
              in
              if isSecretKey && !(isReference child) then [ childPath ] else walk childPath child
            ) value
          )
        else if builtins.isList value then
          lib.concatLists (lib.imap0 (i: walk (path ++ [ (toString i) ])) value)
        else
          [ ];
    in
    walk [ ] cfg.settings
    ++ lib.concatLists (mapAttrsToList (id: i: map (p: [ "instances" id "config" ] ++ p) (walk [ ] i.config)) cfg.instances);

  # Ports of homeservers enabled on this host (the usual ones, where their modules expose them).
  homeserverPorts =
    let
      synapse = config.services.matrix-synapse or { };
      continuwuity = config.services.matrix-continuwuity or { };
      tuwunel = config.services.matrix-tuwunel or { };
      conduit = config.services.matrix-conduit or { };
      asList = value: if builtins.isList value then value else [ value ];
    in
    optionals (synapse.enable or false) (
      map (listener: listener.port or 8008) (synapse.settings.listeners or [ { port = 8008; } ])
    )
    ++ optionals (continuwuity.enable or false) (asList (continuwuity.settings.global.port or 6167))
    ++ optionals (tuwunel.enable or false) (asList (tuwunel.settings.global.port or 6167))
    ++ optionals (conduit.enable or false) [ (conduit.settings.global.port or 6167) ];

  # Every listener (the public one and the bots' own), with the option path that names it.
  botListeners =
    optional (cfg.publicListener != null) (cfg.publicListener // { name = "publicListener"; })
    ++ lib.concatLists (
      mapAttrsToList (
        id: instance:
        lib.imap0 (index: listener: listener // { name = "instances.${id}.listeners.${toString index}"; }) instance.listeners
      ) cfg.instances
    );
  # Ports taken on this host: the management API, the homeservers, and every bot listener.
  takenPorts =
    [ { name = "port (the management API)"; port = cfg.port; } ]
    ++ map (port: { name = "a homeserver"; inherit port; }) homeserverPorts
    ++ map (l: { inherit (l) name port; }) botListeners;
  portClashes = lib.filter (l: lib.length (lib.filter (t: t.port == l.port) takenPorts) > 1) botListeners;

  # Units of homeservers enabled on this host: maubot starts after them.
  homeserverUnits =
    optional (config.services.matrix-synapse.enable or false) "matrix-synapse.service"
    ++ optional (config.services.matrix-continuwuity.enable or false) "continuwuity.service"
    ++ optional (config.services.matrix-tuwunel.enable or false) "tuwunel.service"
    ++ optional (config.services.matrix-conduit.enable or false) "conduit.service";

  # The homeserver hosts the bots talk to, and whether all of them are this machine.
  urlHost =
    url:
    let
      host = builtins.match "https?://(\\[[^]]*]|[^:/]*).*" url;
    in
    if host == null then "" else lib.toLower (lib.head host);
  isLoopback =
    host: builtins.elem host [ "localhost" "[::1]" "::1" ] || builtins.match "127\\.[0-9.]+" host != null;
  homeserverUrls = [ cfg.homeserverUrl ] ++ mapAttrsToList (_: hs: hs.url or "") (finalSettings.homeservers or { });
  # Plugin types that talk to nothing but their homeserver and listen nowhere.
  homeserverOnlyTypes = [ "ping" ];
  networkIsLocal =
    lib.all (url: isLoopback (urlHost url)) homeserverUrls
    && isLoopback cfg.listenAddress
    && lib.all (instance: builtins.elem instance.type homeserverOnlyTypes) (lib.attrValues cfg.instances)
    && lib.all (l: isLoopback l.address) botListeners;

  # Shared by the service, `maubot-setup` and `maubot-ctl`, so that setup runs as the service will: same user,
  # state, sandbox (setup gets the setup-only credentials on top).
  sandbox = loaded: {
    User = "maubot";
    Group = "maubot";
    StateDirectory = "maubot";
    StateDirectoryMode = "0700";
    UMask = "0077";
    WorkingDirectory = cfg.dataDir;
    LoadCredential = mapAttrsToList (name: file: "${name}:${toString file}") loaded;

    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    PrivateUsers = true;
    PrivateMounts = true;
    PrivateIPC = true;
    ProtectHostname = true;
    ProtectClock = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    RestrictAddressFamilies = "AF_UNIX AF_INET AF_INET6";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = !cfg.allowWritableExecutableMemory;
    RemoveIPC = true;
    KeyringMode = "private";
    DevicePolicy = "closed";
    SystemCallArchitectures = "native";
    # An allow list, as nixpkgs' services use: what services need, minus privileged calls and resource tuning.
    SystemCallFilter = [
      "@system-service"
      "~@privileged @resources"
    ];
    SystemCallErrorNumber = "EPERM";
  }
  # Bots that only talk to a homeserver on this machine need no other network.
  // optionalAttrs networkIsLocal {
    IPAddressDeny = "any";
    IPAddressAllow = "localhost";
  };

  # `-p KEY=VALUE` arguments for systemd-run from an attribute set of unit settings.
  toProperties =
    settings:
    lib.concatLists (
      mapAttrsToList (
        key: value:
        let
          render = v: if builtins.isBool v then lib.boolToString v else toString v;
        in
        map (v: "${key}=${render v}") (if builtins.isList value then value else [ value ])
      ) settings
    );

  # `systemd-run` with the sandbox of the service and the given credentials, running `maubot` with the service's
  # config; the caller appends the mode and its arguments. `$io` is set by `ioMode`.
  ioMode = ''if [ -t 0 ] && [ -t 1 ]; then io=--pty; else io=--pipe; fi'';
  sandboxed = unit: loaded: ''
    ${pkgs.systemd}/bin/systemd-run --unit=${unit} --quiet --wait --collect --service-type=exec "$io" \
      ${concatStringsSep " \\\n  " (map (p: "-p ${escapeShellArg p}") (toProperties (sandbox loaded)))} \
      ${cfg.package}/bin/maubot --override ${settingsPath}'';

  ctlCommand = pkgs.writeShellScriptBin "maubot-ctl" ''
    # `maubot` as the service runs it (its config, user, state directory, credentials and sandbox), for the modes
    # an operator runs by hand: `maubot-ctl check-config`. Setup has its own wrapper, `maubot-setup`.
    set -eu
    ${ioMode}
    exec ${sandboxed "maubot-ctl-$$" setupCredentials} "$@"
  '';

  setupCommand = pkgs.writeShellScriptBin "maubot-setup" ''
    # Runs `maubot setup` as the maubot service would run: same user, state directory, credentials, sandbox; then
    # reloads the running service, so that the bots just set up start and the others go on. Arguments pass on
    # (e.g. --add-instance ID). --recovery-key-file PATH is written by this script outside the sandbox (whose /tmp
    # is private and whose view of /root is read-only): setup writes the keys into the state directory, and they
    # are moved to PATH (root's, mode 0400) when it ends.
    set -eu
    key_file=""
    args=()
    while [ $# -gt 0 ]; do
      case "$1" in
        --recovery-key-file) key_file=''${2:?--recovery-key-file needs a path}; shift 2 ;;
        --recovery-key-file=*) key_file=''${1#*=}; shift ;;
        *) args+=("$1"); shift ;;
      esac
    done
    staged=""
    if [ -n "$key_file" ]; then
      if [ -e "$key_file" ]; then
        echo "maubot-setup: $key_file already exists; setup will not overwrite a recovery key file. Choose another path" >&2
        exit 78
      fi
      if [ ! -d "$(${pkgs.coreutils}/bin/dirname -- "$key_file")" ]; then
        echo "maubot-setup: the directory of $key_file does not exist" >&2
        exit 78
      fi
      staged=${cfg.dataDir}/.recovery-keys.$$
      args+=(--recovery-key-file "$staged" --recovery-key-file-shown-as "$key_file")
    fi
    status=0
    ${ioMode}
    ${sandboxed "maubot-setup" setupCredentials} setup "''${args[@]}" || status=$?
    if [ -n "$staged" ] && [ -e "$staged" ]; then
      if ${pkgs.coreutils}/bin/install -m 0400 "$staged" "$key_file"; then
        ${pkgs.coreutils}/bin/rm -f "$staged"
      else
        echo "maubot-setup: could not write $key_file; the recovery keys are in $staged (move them somewhere safe)" >&2
        status=1
      fi
    fi
    if ${pkgs.systemd}/bin/systemctl is-active --quiet maubot.service; then
      ${pkgs.systemd}/bin/systemctl reload maubot.service \
        || echo "maubot-setup: reloading maubot.service failed; restart it to start the new bots" >&2
    fi
    exit "$status"
  '';
in
{
  # This module replaces the Python maubot module that nixpkgs ships under the same option path. Its options
  # that have no counterpart here fail evaluation with guidance instead of being ignored.
  disabledModules = [ "services/matrix/maubot.nix" ];
  imports =
    let
      removed =
        name: why:
        lib.mkRemovedOptionModule [ "services" "maubot" name ] (
          why
          + " This services.maubot is the Rust daemon (docs/nixos.md); bots are declared in services.maubot.instances."
        );
    in
    [
      (removed "plugins" "Plugins are built into the daemon (types: ${concatStringsSep ", " knownTypes}); there are no .mbp files to load.")
      (removed "pythonPackages" "The daemon runs no Python plugins, so it needs no Python packages.")
      (removed "extraConfigFile" "Put settings into services.maubot.settings, and secrets into the *File options (or credentialFiles).")
      (removed "configMutable" "The config is declarative; run-time changes go through the management API (start/stop/enable/disable), which keeps them in the state.")
    ];

  options.services.maubot = {
    enable = mkEnableOption "maubot, a host for Matrix bots (Rust)";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./package.nix { } (this repository's daemon)";
      description = "The maubot daemon, built from this repository (the flake sets its own `packages.<system>.maubot`). Not nixpkgs' `pkgs.maubot`, which is the Python maubot.";
    };

    settings = mkOption {
      type = json.type;
      default = { };
      example = literalExpression ''{ logging.level = "debug"; host.ready_timeout_secs = 30; }'';
      description = ''
        The daemon's configuration (docs/configuration.md), merged over what the other options generate and
        passed to `maubot --override`. Secrets only as `{ credential = NAME; }` with a `*File` option or
        `credentialFiles` providing NAME: an inline secret would be world-readable in the Nix store.
      '';
    };

    homeserverUrl = mkOption {
      type = types.str;
      default = "http://127.0.0.1:8008";
      example = "http://127.0.0.1:6167";
      description = "Client-server API URL of the homeserver. Use 127.0.0.1, not localhost (conduwuit listens on IPv4 only).";
    };

    serverName = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "example.org";
      description = "The homeserver's server name; when set, every bot user must be on it.";
    };

    listenAddress = mkOption {
      type = types.str;
      default = "127.0.0.1";
      description = "Address of the management API. Keep it on loopback and use an SSH tunnel.";
    };

    port = mkOption {
      type = types.port;
      default = 29316;
      description = "Port of the management API.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `port` in the firewall.";
    };

    publicListener = mkOption {
      type = types.nullOr (types.submodule listenerModule);
      default = null;
      example = literalExpression ''{ address = "0.0.0.0"; port = 8090; openFirewall = true; }'';
      description = ''
        A listener that serves plugins' routes only (`/_plugins/<instance>/...`, e.g. the `github` plugin's
        webhook), reachable from outside while the management API stays on loopback. Plain HTTP behind a
        reverse proxy with TLS, or TLS of its own (`tls`, without `clientCaFile`).
      '';
    };

    backup = {
      enable = mkEnableOption "backups of the bots' state (`maubot backup`) from a timer, while the bots run";
      directory = mkOption {
        type = types.str;
        default = "/var/backup/maubot";
        description = ''
          Where the archives go (mode 0700, owned by maubot). They hold access tokens and E2EE keys: back this
          directory up (restic, borg), not the live state directory.
        '';
      };
      schedule = mkOption {
        type = types.str;
        default = "daily";
        example = "*-*-* 03:30:00";
        description = "When to take a backup (systemd `OnCalendar=`); a missed run is made up at boot (`Persistent=`).";
      };
      keep = mkOption {
        type = types.ints.positive;
        default = 7;
        description = "How many archives to keep; older ones are deleted after each new backup.";
      };
      encryptTo = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p" ];
        description = ''
          age recipients (`age1…` public keys from `age-keygen`) the archives are encrypted to (`maubot backup
          --encrypt-to`); they are then named `maubot-<time>.tar.age`. Public keys only: the identity that
          decrypts them (`maubot restore --identity FILE`) stays off this machine.
        '';
      };
    };

    trustedProxies = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "127.0.0.1" ];
      description = "Reverse proxies (addresses or networks) whose `X-Forwarded-For` is believed for plugins' requests.";
    };

    dataDir = mkOption {
      type = types.str;
      default = "/var/lib/maubot";
      readOnly = true;
      description = "The state directory (systemd `StateDirectory=maubot`).";
    };

    watchdogSec = mkOption {
      type = types.ints.positive;
      default = 60;
      description = "systemd watchdog timeout; the daemon pings at half of it while it is healthy.";
    };

    allowWritableExecutableMemory = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Turn off `MemoryDenyWriteExecute=` for the service, for `exec` bots whose runtime compiles code at run time
        (Node, the JVM, LuaJIT). It weakens the sandbox of every bot of the host: prefer a runtime that does without.
      '';
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = "Run `maubot check-config` on the rendered config at build time, so a bad config fails the build.";
    };

    adminUser = mkOption {
      type = types.str;
      default = "admin";
      description = "Management API user whose password hash `adminPasswordHashFile` holds.";
    };
    adminPasswordHashFile = secretFileOption "File with the bcrypt hash (cost >= 12) of the management API password (credential `admin-<adminUser>`).";
    secretKeyFile = secretFileOption "File with at least 32 random bytes signing management API tokens (credential `secret-key`).";
    registrationTokenFile = secretFileOption "File with a registration token, so that `maubot-setup` can register bots (credential `registration-token`).";
    registrationSharedSecretFile = secretFileOption "File with Synapse's registration_shared_secret, so that `maubot-setup` can register bots (credential `registration-shared-secret`).";

    credentialFiles = mkOption {
      type = types.attrsOf secretPath;
      default = { };
      example = literalExpression ''{ github-token = config.sops.secrets."maubot/github-token".path; }'';
      description = "More credentials (name -> file) for `{ credential = NAME; }` references in `settings`.";
    };

    instances = mkOption {
      type = types.attrsOf (types.submodule instanceModule);
      default = { };
      example = literalExpression ''
        {
          ping = {
            type = "ping";
            user = "@ping:example.org";
            passwordFile = config.sops.secrets."maubot/ping-password".path;
            config.allow_invites_from = [ "@*:example.org" ];
          };
        }
      '';
      description = "The bots. Each has its own Matrix user, device and E2EE store.";
    };

    settingsFile = mkOption {
      type = types.path;
      internal = true;
      readOnly = true;
      description = "The rendered (and, with `checkConfig`, checked) settings file.";
    };
  };

  config = mkIf cfg.enable {
    services.maubot.settingsFile = effectiveSettingsFile;

    assertions =
      let
        mxid = "@[a-z0-9._=/+-]+:[A-Za-z0-9.-]+(:[0-9]+)?";
        roomId = "![^:[:space:]]+(:[A-Za-z0-9.-]+(:[0-9]+)?)?";
        loginFiles = [
          cfg.registrationTokenFile
          cfg.registrationSharedSecretFile
        ];
        canRegister = lib.any (f: f != null) loginFiles;
        secretFiles = lib.attrValues setupCredentials;
      in
      [
        {
          assertion = cfg.package.passthru.maubotRust or false;
          message = "services.maubot.package is not this module's daemon (it is probably nixpkgs' pkgs.maubot, the Python maubot, whose config and state this module does not use). Remove the setting to use the Rust daemon built from the module's own nixos-modules/package.nix, or set it to the flake's packages.<system>.maubot.";
        }
        {
          assertion = pythonMaubotKeys == [ ];
          message = "services.maubot.settings: ${concatStringsSep ", " (map (concatStringsSep ".") pythonMaubotKeys)} ${if lib.length pythonMaubotKeys == 1 then "is a setting" else "are settings"} of nixpkgs' Python maubot. This services.maubot is the Rust daemon: its settings are described in docs/configuration.md (the database is a file name inside the state directory, e.g. \"maubot.db\"). Remove or translate them.";
        }
        {
          assertion = (finalSettings.state_dir or cfg.dataDir) == cfg.dataDir;
          message = "services.maubot.settings.state_dir = \"${toString (finalSettings.state_dir or "")}\" would move the bots' state out of ${cfg.dataDir} (StateDirectory=maubot), the only directory the hardened units may write and the one systemd creates with the right owner. Remove settings.state_dir.";
        }
        {
          assertion = inlineSecretPaths == [ ];
          message =
            "services.maubot: secrets written inline would be world-readable in the Nix store: "
            + concatStringsSep ", " (map (p: "settings.${concatStringsSep "." p}") inlineSecretPaths)
            + ". Use the matching *File option (instances.<id>.passwordFile, registrationTokenFile, ...) or "
            + "credentialFiles, and reference it as { credential = NAME; }.";
        }
        {
          assertion = lib.all (f: !(hasPrefix builtins.storeDir (toString f))) secretFiles;
          message = "services.maubot: a secret file is inside the Nix store (world-readable); point the *File options at files outside it, e.g. sops-nix's /run/secrets/...";
        }
        {
          assertion = !(builtins.elem cfg.port homeserverPorts);
          message = "services.maubot.port = ${toString cfg.port} clashes with a homeserver on this host (ports ${concatStringsSep ", " (map toString homeserverPorts)}); keep the default 29316 or pick a free port.";
        }
        {
          assertion = portClashes == [ ];
          message = lib.concatMapStringsSep "\n" (
            l:
            "services.maubot.${l.name}.port = ${toString l.port} is also used by "
            + concatStringsSep " and " (map (t: t.name) (lib.filter (t: t.port == l.port && t.name != l.name) takenPorts))
            + "; give each listener a port of its own."
          ) portClashes;
        }
        {
          assertion = !cfg.backup.enable || (hasPrefix "/" cfg.backup.directory && cfg.backup.directory != cfg.dataDir && !(hasPrefix "${cfg.dataDir}/" cfg.backup.directory));
          message = "services.maubot.backup.directory = \"${cfg.backup.directory}\" must be an absolute path outside ${cfg.dataDir} (a backup inside the state it copies would be copied again, and lost with it).";
        }
        {
          assertion = all (r: hasPrefix "age1" r) cfg.backup.encryptTo;
          message = "services.maubot.backup.encryptTo: ${concatStringsSep ", " (lib.filter (r: !(hasPrefix "age1" r)) cfg.backup.encryptTo)} is not an age X25519 recipient; give the `age1…` public key that `age-keygen` printed (never the AGE-SECRET-KEY identity).";
        }
        {
          assertion = cfg.publicListener == null || cfg.publicListener.tls == null || cfg.publicListener.tls.clientCaFile == null;
          message = "services.maubot.publicListener.tls.clientCaFile is set, but the public listener serves every bot's routes and asks for no client certificates; give the instance that needs them a listener of its own (instances.<id>.listeners).";
        }
        {
          assertion = lib.all (l: l.tls == null || l.tls.keyFile != null) botListeners;
          message = "services.maubot: a listener with tls needs tls.keyFile (the certificate's private key, e.g. a sops-nix secret).";
        }
        {
          assertion = builtins.match "https?://[^/]+(/.*)?" cfg.homeserverUrl != null;
          message = "services.maubot.homeserverUrl = \"${cfg.homeserverUrl}\" is not an http(s) URL with a host; write it like http://127.0.0.1:8008.";
        }
      ]
      ++ lib.concatLists (
        mapAttrsToList (id: instance: [
          {
            assertion = builtins.match "[a-z0-9][a-z0-9-]*" id != null;
            message = "services.maubot.instances.${id}: instance ids use lower-case letters, digits and `-` (they name a directory and credentials).";
          }
          {
            assertion = builtins.elem instance.type knownTypes;
            message = "services.maubot.instances.${id}.type = \"${instance.type}\" is not a known plugin type; known: ${concatStringsSep ", " knownTypes}.";
          }
          {
            assertion = builtins.match mxid instance.user != null;
            message = "services.maubot.instances.${id}.user = \"${instance.user}\" is not a Matrix user ID like @bot:example.org (lower-case localpart).";
          }
          {
            assertion = cfg.serverName == null || instance.homeserver != null || lib.hasSuffix ":${cfg.serverName}" instance.user;
            message = "services.maubot.instances.${id}.user = \"${instance.user}\" is not on services.maubot.serverName = \"${toString cfg.serverName}\".";
          }
          {
            assertion = lib.all (room: builtins.match roomId room != null) instance.roomSubscriptions;
            message = "services.maubot.instances.${id}.roomSubscriptions: use room IDs like !abc:example.org, not aliases (#room:example.org).";
          }
          {
            assertion = instance.passwordFile != null || instance.accessTokenFile != null || canRegister || instance.homeserver != null;
            message = "services.maubot.instances.${id}: no way to log in. Set passwordFile (e.g. a sops-nix secret), accessTokenFile, or registrationTokenFile / registrationSharedSecretFile so that maubot-setup can register the bot.";
          }
          {
            assertion = instance.type != "exec" || instance.exec.package != null || instance.config ? command;
            message = "services.maubot.instances.${id}: type \"exec\" runs a program; set instances.${id}.exec.package (or config.command).";
          }
          {
            assertion = instance.exec.package == null || instance.type == "exec";
            message = "services.maubot.instances.${id}.exec.package is set, but the instance's type is \"${instance.type}\"; set type = \"exec\".";
          }
          {
            assertion = !(instance.passwordFile != null && instance.accessTokenFile != null);
            message = "services.maubot.instances.${id}: set passwordFile or accessTokenFile, not both.";
          }
        ]) cfg.instances
      );

    warnings =
      optional (builtins.match "https?://localhost([:/].*)?" cfg.homeserverUrl != null)
        "services.maubot.homeserverUrl uses `localhost`, which may resolve to ::1 while the homeserver listens on 127.0.0.1 only; write http://127.0.0.1:PORT."
      ++ optional (cfg.openFirewall && builtins.elem cfg.listenAddress [ "127.0.0.1" "::1" ])
        "services.maubot.openFirewall opens port ${toString cfg.port}, but the management API listens on ${cfg.listenAddress} only."
      ++ optional (cfg.instances == { }) "services.maubot is enabled without instances; it will run no bots."
      ++ map (l: "services.maubot.${l.name}.openFirewall opens port ${toString l.port}, but the listener binds ${l.address} only.") (
        lib.filter (l: l.openFirewall && builtins.elem l.address [ "127.0.0.1" "::1" ]) botListeners
      )
      ++ map (l: "services.maubot.${l.name} serves plain HTTP on ${l.address}, beyond this machine; set tls or put a reverse proxy with TLS in front.") (
        lib.filter (l: l.tls == null && !(builtins.elem l.address [ "127.0.0.1" "::1" ])) botListeners
      )
      ++ optional cfg.allowWritableExecutableMemory
        "services.maubot.allowWritableExecutableMemory turns off MemoryDenyWriteExecute= for every bot of the host.";

    users.users.maubot = {
      isSystemUser = true;
      group = "maubot";
      home = cfg.dataDir;
      description = "maubot Matrix bot host";
    };
    users.groups.maubot = { };

    environment.systemPackages = [
      setupCommand
      ctlCommand
    ];
    environment.etc."maubot/settings.json".source = effectiveSettingsFile;

    networking.firewall.allowedTCPPorts =
      optional cfg.openFirewall cfg.port ++ map (l: l.port) (lib.filter (l: l.openFirewall) botListeners);

    # Backups with the service's identity and sandbox, beside the running service (the bots keep answering).
    systemd.tmpfiles.rules = optional cfg.backup.enable "d ${cfg.backup.directory} 0700 maubot maubot - -";
    systemd.services.maubot-backup = mkIf cfg.backup.enable {
      description = "maubot backup";
      documentation = [ "https://github.com/maubot/maubot" ];
      after = [ "maubot.service" ];
      # One archive, then the oldest beyond `keep` go.
      script = ''
        dir=${escapeShellArg cfg.backup.directory}
        ${cfg.package}/bin/maubot --override ${settingsPath} backup --to "$dir/maubot-$(date -u +%Y%m%dT%H%M%SZ).tar${
          optionalString (cfg.backup.encryptTo != [ ]) ".age"
        }"${concatMapStrings (r: " --encrypt-to ${escapeShellArg r}") cfg.backup.encryptTo}
        ls -1 "$dir" | grep -E '^maubot-[0-9]{8}T[0-9]{6}Z\.tar(\.age)?$' | sort -r | tail -n +${toString (cfg.backup.keep + 1)} \
          | while read -r old; do rm -f -- "$dir/$old"; done
      '';
      path = [
        pkgs.coreutils
        pkgs.gnugrep
      ];
      serviceConfig = sandbox { } // {
        Type = "oneshot";
        ReadWritePaths = [ cfg.backup.directory ];
      };
    };
    systemd.timers.maubot-backup = mkIf cfg.backup.enable {
      description = "maubot backup";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.backup.schedule;
        Persistent = true;
        RandomizedDelaySec = "10min";
      };
    };

    systemd.services.maubot = {
      description = "maubot Matrix bot host";
      documentation = [ "https://github.com/maubot/maubot" ];
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ] ++ homeserverUnits;
      after = [ "network-online.target" ] ++ homeserverUnits;
      # A new config (say, one more bot) reloads: the daemon starts, stops and restarts only what changed.
      reloadTriggers = [ effectiveSettingsFile ];
      # A crash loop ends (exit 78 is never retried at all).
      startLimitBurst = 5;
      startLimitIntervalSec = 600;
      serviceConfig = sandbox runCredentials // {
        Type = "notify";
        NotifyAccess = "main";
        WatchdogSec = cfg.watchdogSec;
        ExecStart = "${cfg.package}/bin/maubot --override ${settingsPath} run";
        # SIGHUP: re-read config and state; RELOADING=1, then READY=1 when applied.
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        Restart = "on-failure";
        RestartSec = 5;
        # 78: the host's config or state is unusable; restarting cannot fix it (run `maubot-setup`, fix the config).
        RestartPreventExitStatus = 78;
        TimeoutStartSec = 120;
        TimeoutStopSec = 30;
      };
    };
  };
}
