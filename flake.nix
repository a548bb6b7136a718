{
  description = "nixcell: run untrusted commands inside exactly a Nix closure";

  # Pinned by flake.lock (`nix flake update` moves it); its rustc must be at least the
  # crate's rust-version (Cargo.toml).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

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
          nativeBuildInputs = [ pkgs.installShellFiles ];
          # Completions and manual pages come from the binary's own clap definitions.
          postInstall = pkgs.lib.optionalString
            (pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform) ''
            installShellCompletion --cmd nixcell \
              --bash <($out/bin/nixcell completions bash) \
              --zsh <($out/bin/nixcell completions zsh) \
              --fish <($out/bin/nixcell completions fish)
            mkdir man
            $out/bin/nixcell man --dir man
            installManPage man/*.1
          '';
          # The integration tests need user namespaces and a Nix store, which the
          # build sandbox does not give; they run with scripts/test.sh instead.
          doCheck = false;
          meta = {
            description = "Sandbox runtime for untrusted code inside a Nix closure";
            license = pkgs.lib.licenses.mit;
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
