# Which of the attribute paths `names` (space-separated, e.g. "jq python3Packages.pandas")
# name a package of the package set at `nixpkgs` ("" for <nixpkgs>). Nothing is built.
{ nixpkgs ? "", names }:
let
  pkgs = if nixpkgs == "" then import <nixpkgs> { } else import (/. + nixpkgs) { };
  parts = n: builtins.filter builtins.isString (builtins.split "\\." n);
  walk = set: ps:
    if ps == [ ] then (set.type or "") == "derivation"
    else builtins.isAttrs set && set ? ${builtins.head ps} && walk set.${builtins.head ps} (builtins.tail ps);
  has = n: let r = builtins.tryEval (walk pkgs (parts n)); in r.success && r.value;
  asked = builtins.filter (n: builtins.isString n && n != "") (builtins.split " " names);
in
builtins.filter has asked
