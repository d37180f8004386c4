# NixOS module for narpush: `services.narpush`.
#
# Enabling it registers narpush-hook as nix-daemon's post-build-hook (unless `registerHook` is
# off), lets the user `narpush` use nix-daemon (`extra-allowed-users`), and runs the upload
# daemon as that system user, socket-activated and sandboxed exactly like
# systemd/narpush.service (the sandbox is the shared list in nix/hardening.nix). Secrets never
# enter the Nix store: key and credentials files are read at service start through
# LoadCredential or EnvironmentFile, and an assertion refuses store paths for them.
# Options exist only for what the daemon does; each unbuilt feature brings its own.
#
# Usage (flake): imports = [ narpush.nixosModules.default ];
#                services.narpush = { enable = true; target = "s3://…"; secretKeyFiles = [ … ]; };
{ config, lib, pkgs, ... }:

let
  cfg = config.services.narpush;
  settingsFormat = pkgs.formats.toml { };

  # Defaults of the daemon (docs/configuration.md); the nix-daemon environment only needs the
  # variables when the module moves a path away from them.
  defaultSocket = "/run/narpush/narpush.sock";
  defaultStateDir = "/var/lib/narpush";
  defaultSpoolDir = "${defaultStateDir}/spool";

  # systemd copies credentials to this directory, readable by the service's user only.
  credentialsDir = "/run/credentials/narpush.service";
  keyCredential = i: "signing-key-${toString i}";

  stateDir = cfg.settings.state_dir;
  spoolDir = if cfg.settings.spool_dir != null then cfg.settings.spool_dir else "${stateDir}/spool";

  # `IP:PORT` or `[IPv6]:PORT`: the port, or null when metricsListen has none.
  metricsPort =
    let m = builtins.match ".*:([0-9]+)" (toString cfg.metricsListen);
    in if cfg.metricsListen == null || m == null then null else lib.toInt (builtins.head m);

  inStore = path: lib.hasPrefix "${builtins.storeDir}/" (toString path);

  # What the daemon reads: the user's settings, minus unset optional keys (TOML has no null),
  # plus what the module owns (target, key paths inside the credentials directory).
  daemonSettings =
    lib.filterAttrs (_: value: value != null) cfg.settings
    // lib.optionalAttrs (cfg.target != null) { target = cfg.target; }
    // lib.optionalAttrs (cfg.metricsListen != null) { metrics_listen = cfg.metricsListen; }
    // lib.optionalAttrs (cfg.secretKeyFiles != [ ]) {
      secret_key_files = lib.imap0 (i: _: "${credentialsDir}/${keyCredential i}") cfg.secretKeyFiles;
    };

  configFile = settingsFormat.generate "narpush.toml" daemonSettings;

  hardening = import ./nix/hardening.nix;
in
{
  options.services.narpush = {
    enable = lib.mkEnableOption "narpush, which uploads every path Nix builds to a signed binary cache";

    # nixpkgs has no narpush: without the flake's overlay, the package is built from this
    # checkout.
    package = lib.mkPackageOption (pkgs // { narpush = pkgs.narpush or (pkgs.callPackage ./package.nix { }); }) "narpush" {
      extraDescription = ''
        It provides both `narpush` and `narpush-hook`. Without `pkgs.narpush` (the flake's
        `overlays.default`), it is built from this module's checkout (package.nix).
      '';
    };

    registerHook = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Set `nix.settings.post-build-hook` to narpush-hook. Turn it off when another module owns
        the hook (a script that runs several hooks, one of them
        `''${config.services.narpush.package}/bin/narpush-hook`).
      '';
    };

    target = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "s3://nix-cache?endpoint=https://ACCOUNT_ID.r2.cloudflarestorage.com&region=auto";
      description = ''
        Where the cache is, as an `s3://BUCKET?endpoint=…&region=…&profile=…` or `file:///DIR` URL
        (the syntax of `nix copy --to`). `null` keeps the daemon's default, a directory cache in
        `<state_dir>/cache`.
      '';
    };

    secretKeyFiles = lib.mkOption {
      type = lib.types.listOf lib.types.path;
      default = [ ];
      example = [ "/var/lib/secrets/narpush-signing-key" ];
      description = ''
        Signing keys in Nix's format (`narpush keygen NAME` or `nix key generate-secret`); every
        narinfo is signed with each of them. Give paths outside the Nix store, as strings: the
        files are read at service start through systemd's LoadCredential, so only root needs to
        be able to read them. Empty: `NARPUSH_SIGNING_KEY` from
        {option}`services.narpush.environmentFile` if it sets it, else the key the daemon
        generates in `<state_dir>/signing-key` on first start.
      '';
    };

    credentialsFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = "/var/lib/secrets/narpush-aws-credentials";
      description = ''
        An AWS shared credentials file (`[default]` with `aws_access_key_id` and
        `aws_secret_access_key`; for R2, an API token's S3 credentials). Read at service start
        through LoadCredential; the daemon sees it as `AWS_SHARED_CREDENTIALS_FILE`. Pick another
        of its profiles with `profile=` in {option}`services.narpush.target`.
      '';
    };

    environmentFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = "/run/secrets/narpush.env";
      description = ''
        A file of `NAME=value` lines for the daemon's environment, read by systemd at service
        start (as agenix or sops-nix write them): `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
        or `NARPUSH_SIGNING_KEY` (a secret key's text, used when
        {option}`services.narpush.secretKeyFiles` is empty). Keep it outside the Nix store.
      '';
    };

    metricsListen = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "127.0.0.1:9184";
      description = ''
        Serve Prometheus metrics at `http://ADDRESS/metrics` (the `metrics_listen` key:
        `IP:PORT`, `[::1]:9184` for IPv6). `null`: no endpoint. The metrics name no store path,
        URL or secret, but whoever can connect learns the queue's size and failure counts: keep
        the address on loopback or a private network.
      '';
    };

    openMetrics = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Open the TCP port of {option}`services.narpush.metricsListen` in the firewall, for a
        Prometheus server on another machine.
      '';
    };

    socketGroup = lib.mkOption {
      type = lib.types.nonEmptyStr;
      default = "narpush";
      example = "wheel";
      description = ''
        Group owning the daemon's socket (mode 0660, owner root). Its members can connect:
        everyone may read `narpush status`; enqueuing also needs a uid in
        {option}`services.narpush.settings.allowed_uids`. The group `narpush` is created by this
        module; any other group must exist.
      '';
    };

    settings = lib.mkOption {
      default = { };
      description = ''
        The daemon's configuration file (docs/configuration.md), rendered as TOML. Keys not
        declared here are passed through; the daemon refuses keys it does not know. `target`,
        `secret_key_files` come from the options of the same meaning.
      '';
      type = lib.types.submodule {
        freeformType = settingsFormat.type;
        options = {
          socket = lib.mkOption {
            type = lib.types.str;
            default = defaultSocket;
            description = "Path of the Unix socket; systemd listens on it for the daemon.";
          };
          state_dir = lib.mkOption {
            type = lib.types.str;
            default = defaultStateDir;
            description = "Queue database, generated key and default cache. Outside /var/lib/narpush it is created by tmpfiles and made writable in the sandbox.";
          };
          spool_dir = lib.mkOption {
            type = lib.types.nullOr lib.types.str;
            default = null;
            description = "Where the hook leaves requests while the daemon does not answer; `null` means `<state_dir>/spool`.";
          };
          compression = lib.mkOption {
            type = lib.types.enum [ "zstd" "xz" "none" ];
            default = "zstd";
            description = "Compression of uploaded NARs.";
          };
          compression_level = lib.mkOption {
            type = lib.types.nullOr lib.types.int;
            default = null;
            description = "Compression level (zstd 1–19, xz 0–9); `null` keeps the daemon's default.";
          };
          jobs = lib.mkOption {
            type = lib.types.ints.between 1 1024;
            default = 2;
            description = "NARs over 1 MiB compressed and uploaded at once (each holds at most 8 MiB in memory, two 8 MiB parts when streamed in parts; see `single_put_max_bytes`).";
          };
          parallel_requests = lib.mkOption {
            type = lib.types.ints.between 1 1024;
            default = 128;
            description = "Small requests in flight at once: cache lookups, narinfos and NARs up to 1 MiB.";
          };
          batch_window_ms = lib.mkOption {
            type = lib.types.ints.between 0 60000;
            default = 500;
            description = "How long the daemon collects requests before resolving closures, in milliseconds.";
          };
          max_attempts = lib.mkOption {
            type = lib.types.ints.positive;
            default = 20;
            description = "Upload attempts per path before it is marked failed (`narpush retry` re-queues it).";
          };
          allowed_uids = lib.mkOption {
            type = lib.types.listOf lib.types.ints.unsigned;
            default = [ 0 ];
            description = "Users who may enqueue paths. nix-daemon runs the hook as root (0).";
          };
          upload_build_logs = lib.mkOption {
            type = lib.types.bool;
            default = false;
            description = ''
              Upload build logs to `log/<drv>` so that `nix log` finds them. Off by default:
              on a public bucket every build log would be published.
            '';
          };
          upstream_public_keys = lib.mkOption {
            type = lib.types.listOf lib.types.str;
            default = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
            description = ''
              Keys of caches clients already substitute from: paths the store holds with a valid
              signature by one of them, or that an `upstream_caches` cache serves signed by one
              of them, are not uploaded. `[ ]` uploads everything.
            '';
          };
          upstream_caches = lib.mkOption {
            type = lib.types.listOf (
              lib.types.either lib.types.str (
                lib.types.submodule {
                  options = {
                    url = lib.mkOption {
                      type = lib.types.str;
                      description = "The cache's URL.";
                    };
                    keys = lib.mkOption {
                      type = lib.types.nonEmptyListOf lib.types.str;
                      description = "The only keys that count for this cache's narinfos.";
                    };
                  };
                }
              )
            );
            default = [ ];
            example = [
              "https://cache.nixos.org"
              {
                url = "https://cache.example.com";
                keys = [ "company-1:..." ];
              }
            ];
            description = ''
              Caches asked for each path before it is uploaded (https://, http:// or file://): a
              URL (any `upstream_public_keys` key counts for it), or `{ url; keys; }` (only these
              keys count, and only for this cache). A path counts as served only if the cache
              also has the NAR its narinfo names.
            '';
          };
          refresh_after = lib.mkOption {
            type = lib.types.str;
            default = "1d";
            description = "A path found in the cache gets its narinfo rewritten once it is older than this, so that retention GC keeps it.";
          };
        };
      };
    };

    gc = {
      enable = lib.mkEnableOption "retention GC of the cache (`narpush gc`) on a timer";
      olderThan = lib.mkOption {
        type = lib.types.str;
        default = "30d";
        description = ''
          Paths whose narinfo is older than this, and that no younger path needs, are deleted.
          At least `settings.refresh_after` plus `grace`.
        '';
      };
      grace = lib.mkOption {
        type = lib.types.str;
        default = "1h";
        description = "Nothing younger than this is deleted (at least 15m; above the longest upload).";
      };
      keep = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [ ];
        description = "Store paths whose closures are kept whatever their age.";
      };
      dates = lib.mkOption {
        type = lib.types.str;
        default = "weekly";
        description = "When to collect, as a systemd calendar expression (OnCalendar=).";
      };
    };
  };

  config = lib.mkIf cfg.enable {
    assertions =
      map (file: {
        assertion = !inStore file;
        message = "services.narpush.secretKeyFiles: ${toString file} is in the Nix store, where it would be world-readable. Keep the signing key outside the store and give its path as a string.";
      }) cfg.secretKeyFiles
      ++ [
        {
          assertion = cfg.credentialsFile == null || !inStore cfg.credentialsFile;
          message = "services.narpush.credentialsFile: ${toString cfg.credentialsFile} is in the Nix store, where it would be world-readable. Keep the credentials file outside the store and give its path as a string.";
        }
        {
          assertion = !(cfg.settings ? secret_key_files);
          message = "services.narpush.settings.secret_key_files: set services.narpush.secretKeyFiles instead; those files are passed to the sandboxed service through LoadCredential.";
        }
        {
          assertion = cfg.environmentFile == null || !inStore cfg.environmentFile;
          message = "services.narpush.environmentFile: ${toString cfg.environmentFile} is in the Nix store, where it would be world-readable. Keep it outside the store and give its path as a string.";
        }
        {
          assertion = !(cfg.settings ? metrics_listen);
          message = "services.narpush.settings: set services.narpush.metricsListen instead of settings.metrics_listen.";
        }
        {
          assertion = cfg.metricsListen == null || metricsPort != null;
          message = "services.narpush.metricsListen: ${toString cfg.metricsListen} is not IP:PORT (e.g. 127.0.0.1:9184 or [::1]:9184).";
        }
        {
          assertion = cfg.openMetrics -> cfg.metricsListen != null;
          message = "services.narpush.openMetrics: set services.narpush.metricsListen too, or there is no port to open.";
        }
        {
          assertion = !(cfg.settings ? target);
          message = "services.narpush.settings: set services.narpush.target instead of settings.target.";
        }
        {
          assertion = lib.hasPrefix "/" cfg.settings.socket && lib.hasPrefix "/" stateDir && lib.hasPrefix "/" spoolDir;
          message = "services.narpush.settings: socket, state_dir and spool_dir must be absolute paths.";
        }
      ];

    warnings =
      lib.optional
        (cfg.target != null && lib.hasPrefix "s3://" cfg.target && cfg.credentialsFile == null && cfg.environmentFile == null)
        "services.narpush.target is an s3:// URL but neither services.narpush.credentialsFile nor services.narpush.environmentFile is set: the daemon will find no S3 credentials unless you pass AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY to narpush.service yourself.";

    environment.systemPackages = [ cfg.package ];
    networking.firewall.allowedTCPPorts = lib.mkIf (cfg.openMetrics && metricsPort != null) [ metricsPort ];
    # So that `narpush status`, `wait`, `push` and `retry` find a moved socket without --socket.
    environment.variables = lib.optionalAttrs (cfg.settings.socket != defaultSocket) {
      NARPUSH_SOCKET = cfg.settings.socket;
    };

    nix.settings.post-build-hook = lib.mkIf cfg.registerHook "${cfg.package}/bin/narpush-hook";
    # The daemon runs `nix` as the user narpush, a client of nix-daemon.
    nix.settings.extra-allowed-users = [ "narpush" ];
    # The hook runs inside nix-daemon and reads only these two variables.
    systemd.services.nix-daemon.environment =
      lib.optionalAttrs (cfg.settings.socket != defaultSocket) { NARPUSH_SOCKET = cfg.settings.socket; }
      // lib.optionalAttrs (spoolDir != defaultSpoolDir) { NARPUSH_SPOOL_DIR = spoolDir; };

    users.users.narpush = {
      isSystemUser = true;
      group = "narpush";
      home = stateDir;
      description = "narpush binary cache uploader";
    };
    users.groups.narpush = { };

    # As systemd/narpush.tmpfiles: the GC-root directory, and the state and spool directories so
    # the hook can spool before the daemon has ever started.
    systemd.tmpfiles.rules = [
      "d /nix/var/nix/gcroots/narpush 0755 narpush narpush -"
      "d ${stateDir} 0750 narpush narpush -"
      "d ${spoolDir} 0750 narpush narpush -"
    ];

    systemd.sockets.narpush = {
      description = "narpush upload daemon socket";
      wantedBy = [ "sockets.target" ];
      listenStreams = [ cfg.settings.socket ];
      socketConfig = {
        SocketUser = "root";
        SocketGroup = cfg.socketGroup;
        SocketMode = "0660";
        DirectoryMode = "0755";
        RemoveOnStop = true;
      };
    };

    systemd.services.narpush = {
      description = "narpush: upload Nix build results to a signed binary cache";
      # At boot too, not only on the first connection: a queue or spool left from before is
      # worked off without waiting for the next build.
      wantedBy = [ "multi-user.target" ];
      requires = [ "narpush.socket" ];
      after = [ "narpush.socket" "network.target" "nix-daemon.socket" "nix-daemon.service" ];
      # A new config file is a new store path, hence a changed unit: switching restarts the
      # daemon, which is safe because its queue is on disk.
      restartTriggers = [ configFile ];
      path = [ config.nix.package ];
      environment = {
        NARPUSH_CONFIG = "${configFile}";
        NIX_REMOTE = "daemon";
        XDG_CACHE_HOME = "%C/narpush";
        # Fewer glibc malloc arenas: freed part buffers are reused instead of kept per thread.
        MALLOC_ARENA_MAX = "2";
      } // lib.optionalAttrs (cfg.credentialsFile != null) {
        AWS_SHARED_CREDENTIALS_FILE = "%d/aws-credentials";
      };
      unitConfig.StartLimitIntervalSec = 0;
      serviceConfig = hardening // {
        Type = "notify";
        ExecStart = "${cfg.package}/bin/narpush daemon";
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        Restart = "on-failure";
        RestartSec = "2s";
        KillMode = "mixed";
        TimeoutStopSec = "45s";
        User = "narpush";
        Group = "narpush";
        RuntimeDirectory = "narpush";
        RuntimeDirectoryPreserve = "yes";
        CacheDirectory = "narpush";
        LoadCredential =
          lib.imap0 (i: file: "${keyCredential i}:${toString file}") cfg.secretKeyFiles
          ++ lib.optional (cfg.credentialsFile != null) "aws-credentials:${toString cfg.credentialsFile}";
        ReadWritePaths =
          hardening.ReadWritePaths
          ++ lib.optional (stateDir != defaultStateDir) stateDir
          ++ lib.optional (!lib.hasPrefix "${stateDir}/" spoolDir) spoolDir;
      } // lib.optionalAttrs (cfg.environmentFile != null) {
        EnvironmentFile = toString cfg.environmentFile;
      } // lib.optionalAttrs (stateDir == defaultStateDir) {
        # Outside /var/lib, state_dir comes from tmpfiles and ReadWritePaths instead.
        StateDirectory = "narpush";
        StateDirectoryMode = "0750";
      };
    };

    # Retention GC: the same configuration, credentials and sandbox as the daemon, once per
    # `gc.dates`; a run missed while the machine was off is made up at the next boot.
    systemd.services.narpush-gc = lib.mkIf cfg.gc.enable {
      description = "narpush: delete what no recent path of the binary cache needs";
      after = [ "network.target" ];
      environment = {
        NARPUSH_CONFIG = "${configFile}";
        XDG_CACHE_HOME = "%C/narpush";
      } // lib.optionalAttrs (cfg.credentialsFile != null) {
        AWS_SHARED_CREDENTIALS_FILE = "%d/aws-credentials";
      };
      serviceConfig = hardening // {
        Type = "oneshot";
        ExecStart = lib.escapeShellArgs (
          [ "${cfg.package}/bin/narpush" "gc" "--older-than" cfg.gc.olderThan "--grace" cfg.gc.grace ]
          ++ lib.concatMap (path: [ "--keep" path ]) cfg.gc.keep
        );
        User = "narpush";
        Group = "narpush";
        CacheDirectory = "narpush";
        LoadCredential = lib.optional (cfg.credentialsFile != null) "aws-credentials:${toString cfg.credentialsFile}";
        ReadWritePaths = hardening.ReadWritePaths ++ lib.optional (stateDir != defaultStateDir) stateDir;
      } // lib.optionalAttrs (cfg.environmentFile != null) {
        EnvironmentFile = toString cfg.environmentFile;
      } // lib.optionalAttrs (stateDir == defaultStateDir) {
        StateDirectory = "narpush";
        StateDirectoryMode = "0750";
      };
    };
    systemd.timers.narpush-gc = lib.mkIf cfg.gc.enable {
      description = "narpush retention GC";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.gc.dates;
        Persistent = true;
        RandomizedDelaySec = "1h";
      };
    };
  };
}
