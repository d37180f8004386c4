# narpush as a flake: the package for Linux and macOS, the NixOS module (Linux only), and an
# overlay that adds `pkgs.narpush` (which the module then uses as its default package).
{
  description = "narpush: upload every path Nix builds to a signed binary cache on S3 or R2";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        narpush = pkgs.callPackage ./package.nix { };
        default = narpush;
      });

      overlays.default = final: _prev: { narpush = final.callPackage ./package.nix { }; };

      nixosModules.default = ./nixos-module.nix;
      nixosModules.narpush = self.nixosModules.default;

      # `nix flake check`: the NixOS module evaluated with nixpkgs' lib.evalModules in several
      # configurations (scripts/packaging/eval-module.nix, which scripts/check-packaging runs
      # too); the check fails, printing the report, when any expectation fails.
      checks = nixpkgs.lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
          evaluated = import ./scripts/packaging/eval-module.nix {
            inherit (nixpkgs) lib;
            checkFlakeChecks = false;
          };
          passed = nixpkgs.lib.all (c: c.ok) evaluated.checks;
        in
        {
          nixos-module = pkgs.runCommand "narpush-nixos-module-eval" { inherit (evaluated) report; } (
            ''
              printf '%s' "$report"
            ''
            + (if passed then "touch $out\n" else "exit 1\n")
          );
        }
      );
    };
}
