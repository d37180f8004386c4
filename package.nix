# Nix package for narpush: builds both binaries (`narpush`, `narpush-hook`) from this
# repository with the locked dependencies of Cargo.lock, and on Linux installs the systemd units,
# sysusers.d and tmpfiles.d files from systemd/ with every binary path pointing into the package.
# Used by flake.nix and, when pkgs has no `narpush`, by nixos-module.nix.
{
  lib,
  stdenv,
  rustPlatform,
  coreutils,
}:

rustPlatform.buildRustPackage {
  pname = "narpush";
  version = "0.1.0";

  # cleanSource drops .git and editor/result leftovers; the top-level cargo target/ directory
  # (gigabytes after a local build) is dropped too. Only that one: daemon/src/target is code.
  src = lib.cleanSourceWith {
    src = lib.cleanSource ./.;
    filter = path: _type: path != toString ./target;
  };
  cargoLock.lockFile = ./Cargo.lock;

  # The workspace also holds the end-to-end test crate; only the two binaries ship.
  cargoBuildFlags = [
    "--package"
    "narpush"
    "--package"
    "narpush-hook"
  ];

  # The suite drives real Nix builds against a live Nix store and an S3 server, neither of which
  # exists inside the build sandbox; scripts/test runs it outside Nix.
  doCheck = false;

  postInstall = lib.optionalString stdenv.hostPlatform.isLinux ''
    install -Dm644 systemd/narpush.service $out/lib/systemd/system/narpush.service
    install -Dm644 systemd/narpush.socket $out/lib/systemd/system/narpush.socket
    install -Dm644 systemd/narpush.sysusers $out/lib/sysusers.d/narpush.conf
    install -Dm644 systemd/narpush.tmpfiles $out/lib/tmpfiles.d/narpush.conf
    substituteInPlace $out/lib/systemd/system/narpush.service \
      --replace-fail "ExecStart=/usr/local/bin/narpush" "ExecStart=$out/bin/narpush" \
      --replace-fail "ExecReload=/bin/kill" "ExecReload=${coreutils}/bin/kill"
  '';

  meta = {
    description = "Uploads every path Nix builds to a signed binary cache on S3-compatible storage";
    homepage = "https://github.com/narpush/narpush";
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "narpush";
    platforms = lib.platforms.linux ++ lib.platforms.darwin;
  };
}
