# nixcell's evaluator of the supported devenv.nix subset (no devenv needed).
#
# Arguments (all strings, given with --argstr):
#   decl     absolute path of the user's devenv.nix
#   nixpkgs  absolute path of the package set, or "" for <nixpkgs>
#
# Attributes:
#   description  JSON-able data: errors, packages, python, services, processes, env
#   env          a buildEnv of the packages, the Python environment and the services'
#                packages: the cell's software
{ decl, nixpkgs ? "" }:
let
  pkgs = if nixpkgs == "" then import <nixpkgs> { } else import (/. + nixpkgs) { };
  lib = pkgs.lib or { };
  file = baseNameOf decl;

  raw = import (/. + decl);
  allArgs = { inherit pkgs lib config; };
  formals = builtins.functionArgs raw;
  user =
    if builtins.isFunction raw then
      raw (if formals == { } then allArgs else builtins.intersectAttrs formals allArgs)
    else raw;
  # devenv passes the merged configuration; the user's own set is ours.
  config = user;

  # ---- the supported option set --------------------------------------------------
  known = {
    packages = true;
    languages = { python = { enable = true; version = true; libraries = true; package = true; }; };
    services = { redis = { enable = true; port = true; }; };
    processes = "process";
    env = "env";
  };
  processKeys = { exec = true; };

  unknownIn = prefix: allowed: set:
    builtins.concatLists (map
      (k:
        let
          path = if prefix == "" then k else "${prefix}.${k}";
          a = allowed.${k} or null;
          v = set.${k};
        in
        if a == null then [ "unsupported option `${path}` in ${file}" ]
        else if a == "process" then
          (if builtins.isAttrs v then
            builtins.concatLists (map
              (p: unknownIn "${path}.${p}" processKeys v.${p})
              (builtins.attrNames v))
          else [ "option `${path}` in ${file} must be an attribute set" ])
        else if a == "env" then
          (if builtins.isAttrs v then [ ] else [ "option `${path}` in ${file} must be an attribute set" ])
        else if builtins.isAttrs a then
          (if builtins.isAttrs v && !(v ? type && v.type == "derivation") then unknownIn path a v
          else [ "option `${path}` in ${file} must be an attribute set" ])
        else [ ])
      (builtins.attrNames set));

  typeErrors =
    if !(builtins.isAttrs user) then [ "${file} must evaluate to an attribute set (or a function returning one)" ]
    else if isDrv user then [ "${file} evaluates to a package, not to devenv options (packages, languages, services, processes, env)" ]
    else unknownIn "" known user;

  check = cond: msg: if cond then [ ] else [ msg ];
  isDrv = v: builtins.isAttrs v && (v.type or "") == "derivation";

  packages = user.packages or [ ];
  py = (user.languages or { }).python or { };
  pyEnabled = py.enable or false;
  pyLibs = py.libraries or [ ];
  redis = (user.services or { }).redis or { };
  redisEnabled = redis.enable or false;
  redisPort = redis.port or 6379;
  processes = user.processes or { };
  envVars = user.env or { };

  pyAttr = v: "python" + builtins.replaceStrings [ "." ] [ "" ] v;
  basePython =
    if py ? package then py.package
    else if py ? version then pkgs.${pyAttr py.version}
    else pkgs.python3;

  valueErrors =
    check (builtins.isList packages) "option `packages` in ${file} must be a list"
    ++ (if builtins.isList packages then
      builtins.concatLists (map (p: check (isDrv p) "option `packages` in ${file}: an element is not a package") packages)
    else [ ])
    ++ check (builtins.isBool pyEnabled) "option `languages.python.enable` in ${file} must be true or false"
    ++ check (builtins.isList pyLibs && builtins.all builtins.isString pyLibs)
      "option `languages.python.libraries` in ${file} must be a list of strings"
    ++ check (!(py ? version) || builtins.isString py.version) "option `languages.python.version` in ${file} must be a string such as \"3.11\""
    ++ check (!(py ? version) || py ? package || pkgs ? ${pyAttr py.version})
      "option `languages.python.version` in ${file}: the package set has no ${pyAttr (py.version or "")}"
    ++ check (!(py ? package) || pyLibs == [ ])
      "options `languages.python.package` and `languages.python.libraries` in ${file} exclude each other"
    ++ check (!(py ? package) || isDrv py.package) "option `languages.python.package` in ${file} must be a package"
    ++ (if pyEnabled && !(py ? package) && builtins.isList pyLibs then
      builtins.concatLists (map
        (n: check (builtins.isString n && (basePython.pkgs or { }) ? ${n})
          "option `languages.python.libraries` in ${file}: the package set has no Python library `${toString n}`")
        pyLibs)
    else [ ])
    ++ check (builtins.isBool redisEnabled) "option `services.redis.enable` in ${file} must be true or false"
    ++ check (builtins.isInt redisPort && redisPort > 0 && redisPort < 65536)
      "option `services.redis.port` in ${file} must be a port number"
    ++ builtins.concatLists (map
      (n: check (builtins.isString (processes.${n}.exec or null))
        "option `processes.${n}.exec` in ${file} must be a string")
      (builtins.attrNames processes))
    ++ builtins.concatLists (map
      (n: check (builtins.match "[A-Za-z_][A-Za-z0-9_]*" n != null) "option `env.${n}` in ${file}: not a valid variable name"
        ++ check (builtins.isString envVars.${n} || builtins.isInt envVars.${n} || builtins.isBool envVars.${n})
        "option `env.${n}` in ${file} must be a string, an integer or a boolean")
      (builtins.attrNames envVars));

  errors = if typeErrors != [ ] then typeErrors else valueErrors;

  python =
    if !pyEnabled then null
    else if py ? package || pyLibs == [ ] then basePython
    else basePython.withPackages (ps: map (n: ps.${n}) pyLibs);

  processScripts = builtins.mapAttrs
    (n: p: pkgs.writeShellScriptBin "nixcell-process-${n}" p.exec)
    processes;

  envValue = v: if builtins.isBool v then (if v then "1" else "") else toString v;

  env = pkgs.buildEnv {
    name = "nixcell-env";
    paths = packages
      ++ (if python == null then [ ] else [ python ])
      ++ (if redisEnabled then [ pkgs.redis ] else [ ])
      ++ builtins.attrValues processScripts;
    ignoreCollisions = true;
  };
in
{
  inherit env;
  description =
    if errors != [ ] then { inherit errors; }
    else {
      errors = [ ];
      packages = map (p: p.pname or (builtins.parseDrvName p.name).name) packages;
      python = if python == null then null else {
        version = basePython.version or null;
        libraries = pyLibs;
        package = py ? package;
      };
      services =
        if redisEnabled then [{
          name = "redis";
          port = redisPort;
          command = [ "${pkgs.redis}/bin/redis-server" "--port" (toString redisPort) "--bind" "127.0.0.1"
            "--save" "" "--appendonly" "no" "--dir" "/tmp" ];
        }] else [ ];
      processes = map
        (n: {
          name = n;
          exec = processes.${n}.exec;
          command = [ "${processScripts.${n}}/bin/nixcell-process-${n}" ];
        })
        (builtins.attrNames processes);
      env = builtins.mapAttrs (n: v: envValue v) envVars;
    };
}
