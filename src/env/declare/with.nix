# `nixcell run --with NAME ...`: one environment of packages named by attribute paths.
#
# Arguments (strings, given with --argstr):
#   names    attribute paths separated by spaces, e.g. "python3 jq python3Packages.numpy"
#   nixpkgs  absolute path of the package set, or "" for <nixpkgs>
{ names, nixpkgs ? "" }:
let
  pkgs = if nixpkgs == "" then import <nixpkgs> { } else import (/. + nixpkgs) { };
  words = s: builtins.filter (w: builtins.isString w && w != "") (builtins.split " " s);
  lookup = name:
    let
      path = builtins.filter builtins.isString (builtins.split "\\." name);
      found = builtins.foldl'
        (acc: k: if acc != null && builtins.isAttrs acc && acc ? ${k} then acc.${k} else null)
        pkgs
        path;
    in
    if found == null then throw "--with ${name}: the package set has no attribute `${name}`"
    else if !(builtins.isAttrs found && (found.type or "") == "derivation")
    then throw "--with ${name}: `${name}` is not a package"
    else found;
in
pkgs.buildEnv {
  name = "nixcell-with";
  paths = map lookup (words names);
  ignoreCollisions = true;
}
