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
    };
}
