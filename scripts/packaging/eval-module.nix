# Evaluates nixos-module.nix with nixpkgs' real lib.evalModules (and package.nix through a stub
# callPackage) in several configurations, and returns, for scripts/check-packaging:
#   checks: [ { name, ok, detail } ]  every expectation, with what was found when it fails
#   report: the same as text, one check per line
#   units.<scenario>.{service,socket}: unit files rendered the way NixOS writes them, for
#           systemd-analyze to verify and score like systemd/narpush.service.
# Run: nix eval --raw --file scripts/packaging/eval-module.nix --arg libPath PATH report
# (flake.nix's `checks` pass nixpkgs' `lib` itself instead of a path.)
{
  libPath ? null,
  lib ? import libPath,
  repo ? ../..,
  # The checks of flake.nix's own `checks` output; off when that output runs this file.
  checkFlakeChecks ? true,
}:

let
  stubs = import ./stubs.nix { inherit lib; };
  hardening = import (repo + "/nix/hardening.nix");

  eval =
    {
      settings,
      pkgs ? stubs.mkPkgs { },
      extra ? { },
    }:
    let
      result = lib.evalModules {
        modules = [
          stubs.nixosStubs
          (repo + "/nixos-module.nix")
          { _module.args.pkgs = pkgs; }
          { services.narpush = settings; }
          extra
        ];
      };
      config = result.config;
    in
    {
      inherit config;
      failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
      service = config.systemd.services.narpush or { };
      socket = config.systemd.sockets.narpush or { };
      # The config file is the unit's restart trigger; the stub generator kept its value.
      rendered = (lib.head (config.systemd.services.narpush.restartTriggers or [ { } ])).rendered or null;
    };

  # Like `eval`, but for configurations that must be refused: the failed assertions' messages,
  # or "type error" when evaluation itself throws (a value of the wrong type).
  refusal =
    args:
    let
      e = eval args;
      attempt = builtins.tryEval (builtins.deepSeq e.failedAssertions (builtins.deepSeq e.rendered e.failedAssertions));
    in
    if attempt.success then attempt.value else [ "type error" ];

  check = name: ok: detail: {
    inherit name;
    ok = ok == true;
    detail = if ok == true then "" else detail;
  };
  expectEq =
    name: actual: expected:
    check name (actual == expected) "expected ${builtins.toJSON expected}, got ${builtins.toJSON actual}";
  expectRefused =
    name: messages: fragment:
    check name (lib.any (lib.hasInfix fragment) messages)
      "expected a refusal mentioning \"${fragment}\", got ${builtins.toJSON messages}";

  # The unit files NixOS would write.
  renderSection = (import ./render.nix).section;
  renderService =
    s:
    renderSection "Unit" (
      {
        Description = s.description;
        After = lib.concatStringsSep " " s.after;
        Requires = lib.concatStringsSep " " s.requires;
      }
      // s.unitConfig
    )
    + renderSection "Service" (
      {
        Environment = lib.mapAttrsToList (k: v: "\"${k}=${toString v}\"") s.environment;
      }
      // s.serviceConfig
    )
    + renderSection "Install" { WantedBy = s.wantedBy; };
  renderSocket =
    s:
    renderSection "Unit" { Description = s.description; }
    + renderSection "Socket" ({ ListenStream = s.listenStreams; } // s.socketConfig)
    + renderSection "Install" { WantedBy = s.wantedBy; };

  pkg = stubs.mkPkgs { };
  storeKey = "${builtins.storeDir}/00000000000000000000000000000000-signing-key";

  minimal = eval { settings.enable = true; };
  disabled = eval { settings.enable = false; };
  full = eval {
    settings = {
      enable = true;
      target = "s3://nix-cache?endpoint=https://ACCOUNT_ID.r2.cloudflarestorage.com&region=auto";
      secretKeyFiles = [
        "/var/lib/secrets/narpush-a"
        "/var/lib/secrets/narpush-b"
      ];
      credentialsFile = "/var/lib/secrets/narpush-aws";
      socketGroup = "wheel";
      environmentFile = "/run/secrets/narpush.env";
      settings = {
        socket = "/run/narpush-ci/narpush.sock";
        state_dir = "/srv/narpush";
        compression = "xz";
        compression_level = 9;
        jobs = 8;
      };
    };
  };
  withGc = eval {
    settings = {
      enable = true;
      credentialsFile = "/var/lib/secrets/narpush-aws";
      gc = {
        enable = true;
        olderThan = "60d";
        grace = "2h";
        keep = [ "/nix/store/00000000000000000000000000000000-system" ];
        dates = "daily";
      };
    };
  };
  withMetrics = eval {
    settings = {
      enable = true;
      metricsListen = "[::]:9184";
      openMetrics = true;
    };
  };
  metricsOnLoopback = eval {
    settings = {
      enable = true;
      metricsListen = "127.0.0.1:9185";
    };
  };
  # Another module owns post-build-hook.
  hookElsewhere = eval {
    settings = {
      enable = true;
      registerHook = false;
    };
    extra.nix.settings.post-build-hook = "/etc/nix/run-all-hooks";
  };
  # No pkgs.narpush: the default package must come from package.nix.
  fromPackageNix = eval {
    settings.enable = true;
    pkgs = stubs.mkPkgs { withNarpush = false; };
  };
  packageLinux = (stubs.mkPkgs { }).callPackage (repo + "/package.nix") { };
  packageDarwin = (stubs.mkPkgs { system = "aarch64-darwin"; }).callPackage (repo + "/package.nix") { };

  # flake.nix's outputs function, called with a stub nixpkgs input.
  flake = import (repo + "/flake.nix");
  systems = [
    "x86_64-linux"
    "aarch64-linux"
    "x86_64-darwin"
    "aarch64-darwin"
  ];
  flakeOutputs = flake.outputs {
    self = flakeOutputs;
    nixpkgs = {
      inherit lib;
      legacyPackages = lib.genAttrs systems (system: stubs.mkPkgs { inherit system; withNarpush = false; });
    };
  };
  overlaid =
    let
      prev = stubs.mkPkgs { withNarpush = false; };
    in
    prev // flakeOutputs.overlays.default (prev // overlaid) prev;

  hardeningKeys = lib.attrNames hardening;
  keyCreds = "/run/credentials/narpush.service";

  checks = [
    # A bare `enable = true`.
    (expectEq "minimal: no failed assertions" minimal.failedAssertions [ ])
    (expectEq "minimal: no warnings" minimal.config.warnings [ ])
    (expectEq "minimal: hook registered with nix-daemon" minimal.config.nix.settings.post-build-hook
      "${pkg.narpush}/bin/narpush-hook"
    )
    (expectEq "minimal: the narpush user may use nix-daemon" minimal.config.nix.settings.extra-allowed-users [
      "narpush"
    ])
    (expectEq "minimal: nix-daemon environment untouched at default paths"
      minimal.config.systemd.services.nix-daemon.environment
      { }
    )
    (expectEq "minimal: rendered config holds the daemon's defaults" minimal.rendered {
      socket = "/run/narpush/narpush.sock";
      state_dir = "/var/lib/narpush";
      compression = "zstd";
      jobs = 2;
      parallel_requests = 128;
      batch_window_ms = 500;
      max_attempts = 20;
      allowed_uids = [ 0 ];
      upload_build_logs = false;
      upstream_public_keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
      upstream_caches = [ ];
      refresh_after = "1d";
    })
    (expectEq "minimal: no retention GC unless enabled" {
      service = minimal.config.systemd.services ? narpush-gc;
      timer = minimal.config.systemd.timers or { } ? narpush-gc;
    } {
      service = false;
      timer = false;
    })
    (expectEq "gc: a timer runs narpush gc with the options, the config and the credentials" {
      inherit (withGc.config.systemd.timers.narpush-gc.timerConfig) OnCalendar Persistent;
      inherit (withGc.config.systemd.services.narpush-gc.serviceConfig) Type ExecStart User LoadCredential;
      config = withGc.config.systemd.services.narpush-gc.environment.NARPUSH_CONFIG
        == withGc.config.systemd.services.narpush.environment.NARPUSH_CONFIG;
      hardened = lib.filterAttrs (k: _: lib.elem k hardeningKeys && k != "ReadWritePaths")
        withGc.config.systemd.services.narpush-gc.serviceConfig
        == removeAttrs hardening [ "ReadWritePaths" ];
    } {
      OnCalendar = "daily";
      Persistent = true;
      Type = "oneshot";
      ExecStart = "${pkg.narpush}/bin/narpush gc --older-than 60d --grace 2h --keep /nix/store/00000000000000000000000000000000-system";
      User = "narpush";
      LoadCredential = [ "aws-credentials:/var/lib/secrets/narpush-aws" ];
      config = true;
      hardened = true;
    })
    (expectEq "minimal: service carries every hardening directive unchanged"
      (lib.filterAttrs (k: _: lib.elem k hardeningKeys) minimal.service.serviceConfig)
      hardening
    )
    (expectEq "minimal: service basics"
      {
        inherit (minimal.service.serviceConfig)
          Type
          ExecStart
          User
          StateDirectory
          RuntimeDirectory
          RuntimeDirectoryPreserve
          LoadCredential
          ;
      }
      {
        Type = "notify";
        ExecStart = "${pkg.narpush}/bin/narpush daemon";
        User = "narpush";
        StateDirectory = "narpush";
        RuntimeDirectory = "narpush";
        RuntimeDirectoryPreserve = "yes";
        LoadCredential = [ ];
      }
    )
    (expectEq "minimal: service environment"
      (removeAttrs minimal.service.environment [ "NARPUSH_CONFIG" ])
      {
        NIX_REMOTE = "daemon";
        XDG_CACHE_HOME = "%C/narpush";
        MALLOC_ARENA_MAX = "2";
      }
    )
    (expectEq "minimal: socket" {
      inherit (minimal.socket) listenStreams;
      inherit (minimal.socket.socketConfig) SocketMode SocketUser SocketGroup;
    } {
      listenStreams = [ "/run/narpush/narpush.sock" ];
      SocketMode = "0660";
      SocketUser = "root";
      SocketGroup = "narpush";
    })
    (expectEq "minimal: system user and group" {
      user = { inherit (minimal.config.users.users.narpush) isSystemUser group; };
      group = minimal.config.users.groups ? narpush;
    } {
      user = {
        isSystemUser = true;
        group = "narpush";
      };
      group = true;
    })
    (check "minimal: tmpfiles create the GC-root directory" (lib.elem
      "d /nix/var/nix/gcroots/narpush 0755 narpush narpush -"
      minimal.config.systemd.tmpfiles.rules
    ) (builtins.toJSON minimal.config.systemd.tmpfiles.rules))
    (expectEq "disabled: the module defines nothing" {
      inherit (disabled.config) systemd users;
      nix = removeAttrs disabled.config.nix [ "package" ]; # set by the stubs
    } {
      systemd = { };
      nix = { };
      users = { };
    })

    # Metrics: the key rendered, the port opened only when asked.
    (expectEq "metrics: no failed assertions" withMetrics.failedAssertions [ ])
    (expectEq "metrics: metricsListen renders metrics_listen" withMetrics.rendered.metrics_listen "[::]:9184")
    (expectEq "metrics: openMetrics opens the port" withMetrics.config.networking.firewall.allowedTCPPorts [ 9184 ])
    (expectEq "metrics: without openMetrics no port opens"
      (metricsOnLoopback.config.networking.firewall.allowedTCPPorts or [ ])
      [ ])
    (expectEq "metrics: off by default" (minimal.rendered ? metrics_listen) false)

    # Every option set.
    (expectEq "full: no failed assertions" full.failedAssertions [ ])
    (expectEq "full: rendered target, keys and settings" {
      inherit (full.rendered)
        target
        secret_key_files
        compression
        compression_level
        jobs
        socket
        state_dir
        ;
    } {
      target = "s3://nix-cache?endpoint=https://ACCOUNT_ID.r2.cloudflarestorage.com&region=auto";
      secret_key_files = [
        "${keyCreds}/signing-key-0"
        "${keyCreds}/signing-key-1"
      ];
      compression = "xz";
      compression_level = 9;
      jobs = 8;
      socket = "/run/narpush-ci/narpush.sock";
      state_dir = "/srv/narpush";
    })
    (expectEq "full: secrets through LoadCredential" full.service.serviceConfig.LoadCredential [
      "signing-key-0:/var/lib/secrets/narpush-a"
      "signing-key-1:/var/lib/secrets/narpush-b"
      "aws-credentials:/var/lib/secrets/narpush-aws"
    ])
    (expectEq "full: AWS credentials file from the credentials directory"
      full.service.environment.AWS_SHARED_CREDENTIALS_FILE
      "%d/aws-credentials"
    )
    (expectEq "full: hook finds the moved socket and spool" full.config.systemd.services.nix-daemon.environment {
      NARPUSH_SOCKET = "/run/narpush-ci/narpush.sock";
      NARPUSH_SPOOL_DIR = "/srv/narpush/spool";
    })
    (expectEq "full: CLI finds the moved socket" full.config.environment.variables {
      NARPUSH_SOCKET = "/run/narpush-ci/narpush.sock";
    })
    (expectEq "full: state outside /var/lib is writable and created" {
      rw = full.service.serviceConfig.ReadWritePaths;
      stateDirectory = full.service.serviceConfig ? StateDirectory;
      tmpfiles = lib.elem "d /srv/narpush 0750 narpush narpush -" full.config.systemd.tmpfiles.rules;
    } {
      rw = [
        "/nix/var/nix/gcroots/narpush"
        "/srv/narpush"
      ];
      stateDirectory = false;
      tmpfiles = true;
    })
    (expectEq "full: socket group and path" {
      inherit (full.socket) listenStreams;
      inherit (full.socket.socketConfig) SocketGroup;
    } {
      listenStreams = [ "/run/narpush-ci/narpush.sock" ];
      SocketGroup = "wheel";
    })
    (expectEq "full: environment file read by systemd" full.service.serviceConfig.EnvironmentFile
      "/run/secrets/narpush.env"
    )
    (expectEq "full: no S3 credentials warning with an environment file" full.config.warnings [ ])
    (expectEq "registerHook = false: another module's post-build-hook stays" {
      hook = hookElsewhere.config.nix.settings.post-build-hook;
      failed = hookElsewhere.failedAssertions;
      service = hookElsewhere.service ? serviceConfig;
    } {
      hook = "/etc/nix/run-all-hooks";
      failed = [ ];
      service = true;
    })
    (expectEq "default package comes from package.nix without pkgs.narpush"
      fromPackageNix.config.nix.settings.post-build-hook
      "${builtins.storeDir}/00000000000000000000000000000000-narpush-0.1.0/bin/narpush-hook"
    )

    # Bad input is refused with a message that says what to do.
    (expectRefused "refused: signing key in the store" (refusal {
      settings = {
        enable = true;
        secretKeyFiles = [ storeKey ];
      };
    }) "would be world-readable")
    (expectRefused "refused: credentials file in the store" (refusal {
      settings = {
        enable = true;
        credentialsFile = storeKey;
      };
    }) "credentialsFile: ${storeKey} is in the Nix store")
    (expectRefused "refused: settings.secret_key_files instead of secretKeyFiles" (refusal {
      settings = {
        enable = true;
        settings.secret_key_files = [ "/etc/narpush/key" ];
      };
    }) "set services.narpush.secretKeyFiles instead")
    (expectRefused "refused: settings.target instead of target" (refusal {
      settings = {
        enable = true;
        settings.target = "file:///srv/cache";
      };
    }) "set services.narpush.target")
    (expectRefused "refused: environment file in the store" (refusal {
      settings = {
        enable = true;
        environmentFile = storeKey;
      };
    }) "environmentFile: ${storeKey} is in the Nix store")
    (expectRefused "refused: options the module does not have" (refusal {
      settings = {
        enable = true;
        noSuchOption = true;
      };
    }) "type error")
    (expectRefused "refused: settings.metrics_listen instead of metricsListen" (refusal {
      settings = {
        enable = true;
        settings.metrics_listen = "127.0.0.1:9184";
      };
    }) "instead of settings.metrics_listen")
    (expectRefused "refused: openMetrics without metricsListen" (refusal {
      settings = {
        enable = true;
        openMetrics = true;
      };
    }) "no port to open")
    (expectRefused "refused: metricsListen without a port" (refusal {
      settings = {
        enable = true;
        metricsListen = "127.0.0.1";
      };
    }) "is not IP:PORT")
    (expectRefused "refused: relative state_dir" (refusal {
      settings = {
        enable = true;
        settings.state_dir = "narpush";
      };
    }) "must be absolute paths")
    (expectRefused "refused: jobs = 0" (refusal {
      settings = {
        enable = true;
        settings.jobs = 0;
      };
    }) "type error")
    (expectRefused "refused: unknown compression" (refusal {
      settings = {
        enable = true;
        settings.compression = "gzip";
      };
    }) "type error")
    (check "warned: s3 target without credentialsFile"
      (
        lib.any (lib.hasInfix "neither services.narpush.credentialsFile nor services.narpush.environmentFile")
          (eval {
            settings = {
              enable = true;
              target = "s3://nix-cache?region=auto";
            };
          }).config.warnings
      )
      "no warning about missing S3 credentials"
    )

    # package.nix, through callPackage.
    (expectEq "package: name and binaries" {
      inherit (packageLinux) name;
      inherit (packageLinux.args) cargoBuildFlags doCheck;
      mainProgram = packageLinux.meta.mainProgram;
    } {
      name = "narpush-0.1.0";
      cargoBuildFlags = [
        "--package"
        "narpush"
        "--package"
        "narpush-hook"
      ];
      doCheck = false;
      mainProgram = "narpush";
    })
    (check "package: Linux installs the units with ExecStart rewritten" (
      lib.hasInfix "$out/lib/systemd/system/narpush.service" packageLinux.args.postInstall
      && lib.hasInfix "ExecStart=$out/bin/narpush" packageLinux.args.postInstall
    ) packageLinux.args.postInstall)
    (expectEq "package: macOS installs no units" packageDarwin.args.postInstall "")
    (expectEq "package: source leaves out target/ and .git but keeps daemon/src/target"
      (lib.genAttrs [ "target" ".git" "daemon/src/target" "Cargo.lock" ] (
        p: packageLinux.args.src.filter (toString (repo + "/${p}")) "directory"
      ))
      {
        target = false;
        ".git" = false;
        "daemon/src/target" = true;
        "Cargo.lock" = true;
      }
    )

    # flake.nix
    (expectEq "flake: nixpkgs input" flake.inputs.nixpkgs.url "github:NixOS/nixpkgs/nixos-unstable")
    (expectEq "flake: packages for every system" (lib.mapAttrs (_: p: {
      default = p.default.name;
      narpush = p.narpush.name;
    }) flakeOutputs.packages) (lib.genAttrs systems (_: {
      default = "narpush-0.1.0";
      narpush = "narpush-0.1.0";
    })))
    (expectEq "flake: overlay adds pkgs.narpush" overlaid.narpush.name "narpush-0.1.0")
    (expectEq "flake: nixosModules.default is nixos-module.nix" (toString flakeOutputs.nixosModules.default) (
      toString (repo + "/nixos-module.nix")
    ))
  ]
  ++ lib.optionals checkFlakeChecks [
    (expectEq "flake: checks evaluate the module on Linux" (lib.mapAttrs (_: c: lib.attrNames c) flakeOutputs.checks) {
      x86_64-linux = [ "nixos-module" ];
      aarch64-linux = [ "nixos-module" ];
    })
    (check "flake: the module check carries this report and passes" (
      let
        moduleCheck = flakeOutputs.checks.x86_64-linux.nixos-module;
      in
      lib.hasInfix "touch $out" moduleCheck.args.script
      && lib.hasInfix "ok\tminimal: no failed assertions" moduleCheck.args.env.report
    ) "the flake's nixos-module check does not carry this file's report")
  ];
in
{
  inherit checks;
  # The checks as text, one per line: "ok|FAIL<TAB>name<TAB>detail" (detail on one line).
  report = lib.concatMapStrings (
    c:
    "${if c.ok then "ok" else "FAIL"}\t${c.name}\t${
      lib.replaceStrings [ "\n" "\t" ] [ " " " " ] c.detail
    }\n"
  ) checks;
  units = lib.mapAttrs (_: e: {
    service = renderService e.service;
    socket = renderSocket e.socket;
  }) { inherit minimal full; };
}
