# The sandbox of narpush.service, as the one list both the NixOS module (serviceConfig) and
# systemd/narpush.service use. scripts/check-packaging fails when the unit file and this list
# disagree on any directive or value, so edit both together. Values are written the way NixOS
# renders them: `true` becomes `true`, a list becomes one line per element.
#
# What the daemon needs, and nothing more: read /nix/store and /etc/nix, run `nix` (a client of
# nix-daemon over its Unix socket), write its state, cache and runtime directories and its GC
# roots, talk HTTPS to the S3 endpoint, and accept connections on the socket systemd hands it.
# RootDirectory/RootImage are not used: the daemon needs the host's /nix/store, nix binaries
# and nix-daemon's socket.
{
  # The whole file system is read-only except the directories systemd creates for the unit
  # (StateDirectory, CacheDirectory, RuntimeDirectory) and the GC-root directory below.
  ProtectSystem = "strict";
  ReadWritePaths = [ "/nix/var/nix/gcroots/narpush" ];
  ProtectHome = true;
  PrivateTmp = true;
  PrivateDevices = true;
  PrivateMounts = true;
  PrivateIPC = true;
  # PrivateNetwork is not set: uploads go to an S3 endpoint on the internet.
  # PrivateUsers is not set: inside a user namespace every uid other than root and the service's
  # own would read as "nobody" through SO_PEERCRED, and allowed_uids could not name them.
  ProtectKernelTunables = true;
  ProtectKernelModules = true;
  ProtectKernelLogs = true;
  ProtectControlGroups = true;
  ProtectClock = true;
  ProtectHostname = true;
  ProtectProc = "invisible";
  ProcSubset = "pid";

  NoNewPrivileges = true;
  CapabilityBoundingSet = "";
  AmbientCapabilities = "";
  RestrictSUIDSGID = true;
  RemoveIPC = true;
  UMask = "0077";

  # Unix for the socket and nix-daemon, IPv4/IPv6 for S3. IPAddressDeny is not set for the
  # same reason as PrivateNetwork: the endpoint's addresses are not known in advance.
  RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
  RestrictNamespaces = true;
  RestrictRealtime = true;
  LockPersonality = true;
  MemoryDenyWriteExecute = true;
  SystemCallArchitectures = "native";
  # setpriority (in @resources) only ever lowers the priority of a thread compressing a smaller
  # NAR beside the largest; the kernel lets no unprivileged process raise it back.
  SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" "setpriority" ];
  # `nix` raises its stack limit with setrlimit (in @resources) and copes with a refusal; a
  # filtered call therefore fails with EPERM instead of killing the process.
  SystemCallErrorNumber = "EPERM";
  DevicePolicy = "closed";
}
