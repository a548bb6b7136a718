{
  description = "nixcell: run untrusted commands inside exactly a Nix closure";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: rec {
        nixcell = pkgs.rustPlatform.buildRustPackage {
          pname = "nixcell";
          version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package.version;
          src = pkgs.lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          # The integration tests need user namespaces and a Nix store, which the
          # build sandbox does not give; they run with scripts/test.sh instead.
          doCheck = false;
          meta = {
            description = "Sandbox runtime for untrusted code inside a Nix closure";
            platforms = pkgs.lib.platforms.linux;
            mainProgram = "nixcell";
          };
        };
        default = nixcell;
      });

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          packages = [
            pkgs.cargo
            pkgs.rustc
            pkgs.clippy
            pkgs.rustfmt
            pkgs.bubblewrap
            pkgs.hyperfine
            pkgs.patchelf
          ];
        };
      });
    };
}
