# Stand-ins for the parts of nixpkgs and NixOS that nixos-module.nix and package.nix touch, so
# both can be evaluated with nothing but nixpkgs' lib (scripts/check-packaging, when NIXPKGS_LIB
# is set). They imitate interfaces, not behaviour: no derivation is ever built, and TOML is not
# rendered (formats.toml.generate keeps the value so checks can read it back).
{ lib }:

let
  # A store path that exists only as a string; enough for interpolation and `type = package`.
  fakeDrv = name: {
    type = "derivation";
    inherit name;
    outPath = "${builtins.storeDir}/00000000000000000000000000000000-${name}";
  };

  # The values TOML can hold: what nixpkgs' formats.toml accepts for freeform settings.
  tomlValue = lib.types.oneOf [
    lib.types.bool
    lib.types.int
    lib.types.float
    lib.types.str
    lib.types.path
    (lib.types.attrsOf tomlValue)
    (lib.types.listOf tomlValue)
  ];

  # buildRustPackage that returns its arguments, so a check can read what package.nix asked for.
  rustPlatform.buildRustPackage =
    args:
    fakeDrv "${args.pname}-${args.version}"
    // {
      inherit args;
      inherit (args) pname version meta;
    };

  mkPkgs =
    {
      system ? "x86_64-linux",
      withNarpush ? true,
    }:
    let
      isLinux = lib.hasSuffix "-linux" system;
      self =
        {
          inherit system rustPlatform;
          stdenv.hostPlatform = {
            inherit system isLinux;
            isDarwin = !isLinux;
          };
          coreutils = fakeDrv "coreutils-9.5";
          # runCommand that returns its arguments, so a check can read the script and inputs.
          runCommand =
            name: env: script:
            fakeDrv name // { args = { inherit env script; }; };
          formats.toml =
            { }:
            {
              type = lib.types.attrsOf tomlValue;
              generate = name: value: fakeDrv name // { rendered = value; };
            };
          callPackage =
            fn: overrides:
            let
              f = if builtins.isFunction fn then fn else import fn;
            in
            f (builtins.intersectAttrs (builtins.functionArgs f) (self // { inherit lib; }) // overrides);
        }
        // lib.optionalAttrs withNarpush { narpush = fakeDrv "narpush-0.1.0"; };
    in
    self;

  # The NixOS options the module sets or reads, declared loosely: their real types live in
  # nixpkgs, and the checks look at the merged values.
  nixosStubs = {
    options = {
      assertions = lib.mkOption {
        type = lib.types.listOf lib.types.unspecified;
        default = [ ];
      };
      warnings = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [ ];
      };
      nix = lib.mkOption {
        type = lib.types.anything;
        default = { };
      };
      systemd = lib.mkOption {
        type = lib.types.anything;
        default = { };
      };
      users = lib.mkOption {
        type = lib.types.anything;
        default = { };
      };
      environment = lib.mkOption {
        type = lib.types.anything;
        default = { };
      };
      networking = lib.mkOption {
        type = lib.types.anything;
        default = { };
      };
    };
    config.nix.package = fakeDrv "nix-2.8.0";
  };
in
{
  inherit fakeDrv mkPkgs nixosStubs;
}
