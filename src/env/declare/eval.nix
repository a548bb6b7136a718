# nixcell's evaluator of the supported devenv.nix subset (no devenv needed).
#
# Arguments (all strings, given with --argstr):
#   decl     absolute path of the user's devenv.nix
#   nixpkgs  absolute path of the package set, or "" for <nixpkgs>
#
# The file is called as devenv calls it: `{ pkgs, lib, config, inputs, ... }`, where
# `inputs.nixpkgs` is the package set in use and `config` the file's own options.
#
# Attributes:
#   description  JSON-able data: errors, packages, python, services, processes,
#                scripts, enter_shell, env
#   env          a buildEnv of the packages, the Python environment, the scripts and
#                the services' packages: the cell's software
{ decl, nixpkgs ? "" }:
let
  source = if nixpkgs == "" then <nixpkgs> else /. + nixpkgs;
  pkgs = import source { };
  lib = pkgs.lib or { };
  file = baseNameOf decl;
  system = pkgs.stdenv.hostPlatform.system or pkgs.system or builtins.currentSystem;

  # As a flake input: its source, its packages and its lib.
  inputs = {
    nixpkgs = {
      outPath = source;
      legacyPackages.${system} = pkgs;
      inherit lib;
    };
  };

  raw = import (/. + decl);
  allArgs = { inherit pkgs lib config inputs; };
  formals = builtins.functionArgs raw;
  user =
    if builtins.isFunction raw then
      raw (if formals == { } then allArgs else builtins.intersectAttrs formals allArgs)
    else raw;
  # devenv passes the merged configuration; the user's own set is ours, with the
  # value of each process port (devenv 2's `ports.<name>.allocate`: in a cell's own
  # network namespace every port is free, so the value is the port asked for).
  config = portValues user;
  portValues = u:
    if !(builtins.isAttrs (u.processes or null)) then u
    else u // {
      processes = builtins.mapAttrs
        (n: p:
          if builtins.isAttrs p && builtins.isAttrs (p.ports or null) then p // {
            ports = builtins.mapAttrs
              (_: po: if builtins.isAttrs po && po ? allocate then po // { value = po.allocate; } else po)
              p.ports;
          } else p)
        u.processes;
    };

  # ---- the supported option set --------------------------------------------------
  # A leaf is `true`; "named" is an attribute set of NAME -> the given option set.
  known = {
    packages = true;
    languages = { python = { enable = true; version = true; libraries = true; package = true; }; };
    services = {
      redis = { enable = true; port = true; };
      postgres = {
        enable = true; port = true; listen_addresses = true; initialDatabases = true;
        initialScript = true; createDatabase = true;
      };
    };
    processes = { named = { exec = true; ports = { named = { allocate = true; }; }; }; };
    scripts = { named = { exec = true; description = true; }; };
    enterShell = true;
    env = "env";
  };
  databaseKeys = { name = true; user = true; pass = true; initialSQL = true; schema = true; };

  # An unknown option: where, and the names that are known there (the Rust side
  # suggests the nearest).
  unknown = path: candidates: { option = path; inherit file candidates; };
  notSet = path: "option `${path}` in ${file} must be an attribute set";

  unknownIn = prefix: allowed: set:
    builtins.concatLists (map
      (k:
        let
          path = if prefix == "" then k else "${prefix}.${k}";
          a = allowed.${k} or null;
          v = set.${k};
        in
        if a == null then [ (unknown path (builtins.attrNames allowed)) ]
        else if a == "env" then
          (if builtins.isAttrs v then [ ] else [ (notSet path) ])
        else if builtins.isAttrs a && a ? named then
          (if builtins.isAttrs v then
            builtins.concatLists (map
              (p: if builtins.isAttrs v.${p} then unknownIn "${path}.${p}" a.named v.${p} else [ (notSet "${path}.${p}") ])
              (builtins.attrNames v))
          else [ (notSet path) ])
        else if builtins.isAttrs a then
          (if builtins.isAttrs v && !(isDrv v) then unknownIn path a v else [ (notSet path) ])
        else [ ])
      (builtins.attrNames set));

  typeErrors =
    if !(builtins.isAttrs user) then [ "${file} must evaluate to an attribute set (or a function returning one)" ]
    else if isDrv user then [ "${file} evaluates to a package, not to devenv options (packages, languages, services, processes, scripts, env)" ]
    else unknownIn "" known user;

  check = cond: msg: if cond then [ ] else [ msg ];
  isDrv = v: builtins.isAttrs v && (v.type or "") == "derivation";
  # An optional sub-option: absent and null alike.
  opt = set: k: set.${k} or null;
  isPort = v: builtins.isInt v && v > 0 && v < 65536;
  validName = n: builtins.match "[A-Za-z0-9_][A-Za-z0-9_.+-]*" n != null;

  packages = user.packages or [ ];
  py = (user.languages or { }).python or { };
  pyEnabled = py.enable or false;
  pyLibraries = py.libraries or [ ];
  # devenv's `libraries` are native library packages (their lib/ goes on the
  # interpreter's library path). Strings without a leading `/` are the old
  # nixcell form, Python library names: still read, never written.
  nativeLibs = builtins.filter (l: !builtins.isString l) pyLibraries;
  legacyLibs = builtins.filter builtins.isString pyLibraries;
  redis = (user.services or { }).redis or { };
  redisEnabled = redis.enable or false;
  redisPort = redis.port or 6379;
  pg = (user.services or { }).postgres or { };
  pgEnabled = pg.enable or false;
  pgPort = pg.port or 5432;
  pgListen = pg.listen_addresses or "";
  pgDatabases = pg.initialDatabases or [ ];
  pgScript = pg.initialScript or null;
  pgCreateDb = pg.createDatabase or true;
  processes = user.processes or { };
  processPorts = n: processes.${n}.ports or { };
  scripts = user.scripts or { };
  enterShell = user.enterShell or "";
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
    ++ check (builtins.isList pyLibraries)
      "option `languages.python.libraries` in ${file} must be a list of packages, e.g. [ pkgs.file ]"
    ++ (if builtins.isList pyLibraries then
      builtins.concatLists (map
        (l: check (isDrv l || (builtins.isString l && builtins.substring 0 1 l != "/"))
          "option `languages.python.libraries` in ${file}: `${toString l}` is not a package (libraries are native library packages, e.g. [ pkgs.file ]; Python libraries go in languages.python.package = pkgs.python3.withPackages (ps: [ ps.pandas ]))")
        pyLibraries)
    else [ ])
    ++ check (!(py ? version) || builtins.isString py.version) "option `languages.python.version` in ${file} must be a string such as \"3.11\""
    ++ check (!(py ? version) || py ? package || pkgs ? ${pyAttr py.version})
      "option `languages.python.version` in ${file}: the package set has no ${pyAttr (py.version or "")}"
    ++ check (!(py ? package) || legacyLibs == [ ])
      "options `languages.python.package` and the Python library names in `languages.python.libraries` in ${file} exclude each other: name Python libraries in languages.python.package = pkgs.python3.withPackages (ps: [ ... ])"
    ++ check (!(py ? package) || isDrv py.package) "option `languages.python.package` in ${file} must be a package"
    ++ (if pyEnabled && !(py ? package) && builtins.isList pyLibraries then
      builtins.concatLists (map
        (n: check ((basePython.pkgs or { }) ? ${n})
          "option `languages.python.libraries` in ${file}: the package set has no Python library `${n}`")
        legacyLibs)
    else [ ])
    ++ check (builtins.isBool redisEnabled) "option `services.redis.enable` in ${file} must be true or false"
    ++ check (isPort redisPort) "option `services.redis.port` in ${file} must be a port number"
    ++ check (builtins.isBool pgEnabled) "option `services.postgres.enable` in ${file} must be true or false"
    ++ check (isPort pgPort) "option `services.postgres.port` in ${file} must be a port number"
    ++ check (!(redisEnabled && pgEnabled) || redisPort != pgPort)
      "options `services.redis.port` and `services.postgres.port` in ${file} are the same port"
    ++ check (builtins.elem pgListen [ "" "127.0.0.1" "localhost" "*" "0.0.0.0" ])
      "option `services.postgres.listen_addresses` in ${file}: nixcell supports \"\" (the unix socket), \"127.0.0.1\", \"localhost\", \"*\" and \"0.0.0.0\" (a cell's postgres listens on its private loopback only)"
    ++ check (builtins.isBool pgCreateDb) "option `services.postgres.createDatabase` in ${file} must be true or false"
    ++ check (pgScript == null || builtins.isString pgScript) "option `services.postgres.initialScript` in ${file} must be a string"
    ++ check (builtins.isList pgDatabases) "option `services.postgres.initialDatabases` in ${file} must be a list of { name = \"...\"; }"
    ++ (if builtins.isList pgDatabases then
      builtins.concatLists (map
        (d:
          if !(builtins.isAttrs d) then [ "option `services.postgres.initialDatabases` in ${file}: an element is not an attribute set { name = \"...\"; }" ]
          else
            builtins.concatLists (map
              (k: if databaseKeys ? ${k} then [ ] else [ (unknown "services.postgres.initialDatabases.*.${k}" (builtins.attrNames databaseKeys)) ])
              (builtins.attrNames d))
            ++ check (builtins.isString (d.name or null) && d.name != "")
              "option `services.postgres.initialDatabases` in ${file}: every database needs a name (a string)"
            ++ builtins.concatLists (map
              (k: check (opt d k == null || builtins.isString d.${k}) "option `services.postgres.initialDatabases.*.${k}` in ${file} must be a string or null")
              [ "user" "pass" "initialSQL" ])
            ++ check (opt d "schema" == null || builtins.isPath d.schema)
              "option `services.postgres.initialDatabases.*.schema` in ${file} must be a path (a .sql file or a directory of them), e.g. ./schema.sql")
        pgDatabases)
    else [ ])
    ++ builtins.concatLists (map
      (n: check (builtins.isString (processes.${n}.exec or null))
        "option `processes.${n}.exec` in ${file} must be a string"
        ++ builtins.concatLists (map
          (pn: check (isPort (processes.${n}.ports.${pn}.allocate or null))
            "option `processes.${n}.ports.${pn}.allocate` in ${file} must be a port number")
          (builtins.attrNames (processPorts n)))
        ++ check (builtins.length (builtins.attrNames (processPorts n)) <= 1)
          "option `processes.${n}.ports` in ${file}: nixcell supports one port per process")
      (builtins.attrNames processes))
    ++ builtins.concatLists (map
      (n: check (validName n) "option `scripts.${n}` in ${file}: not a valid command name"
        ++ check (builtins.isString (scripts.${n}.exec or null))
        "option `scripts.${n}.exec` in ${file} must be a string"
        ++ check (builtins.isString (scripts.${n}.description or ""))
        "option `scripts.${n}.description` in ${file} must be a string")
      (builtins.attrNames scripts))
    ++ check (builtins.isString enterShell) "option `enterShell` in ${file} must be a string (shell code)"
    ++ builtins.concatLists (map
      (n: check (builtins.match "[A-Za-z_][A-Za-z0-9_]*" n != null) "option `env.${n}` in ${file}: not a valid variable name"
        ++ check (builtins.isString envVars.${n} || builtins.isInt envVars.${n} || builtins.isBool envVars.${n})
        "option `env.${n}` in ${file} must be a string, an integer or a boolean")
      (builtins.attrNames envVars));

  errors = if typeErrors != [ ] then typeErrors else valueErrors;

  # ---- Python ----------------------------------------------------------------------
  interpreter =
    if !pyEnabled then null
    else if py ? package || legacyLibs == [ ] then basePython
    else basePython.withPackages (ps: map (n: ps.${n}) legacyLibs);

  libPath = (lib.makeLibraryPath or (ps: builtins.concatStringsSep ":" (map (p: "${p}/lib") ps))) nativeLibs;

  # As devenv does: the interpreter's programs see the native libraries on
  # LD_LIBRARY_PATH. Wrappers of bin/python* win over the interpreter's own links.
  python =
    if interpreter == null || nativeLibs == [ ] then interpreter
    else
      let
        wrappers = pkgs.runCommand "python-native-libraries" { } ''
          mkdir -p "$out/bin"
          for f in ${interpreter}/bin/python*; do
            n=''${f##*/}
            printf '#!%s\nLD_LIBRARY_PATH=%s''${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\nexport LD_LIBRARY_PATH\nexec %s "$@"\n' \
              ${pkgs.runtimeShell} '${libPath}' "$f" > "$out/bin/$n"
            chmod +x "$out/bin/$n"
          done
        '';
      in
      pkgs.buildEnv {
        name = "python-with-native-libraries";
        paths = [ (wrappers // { meta.priority = 1; }) interpreter ];
        ignoreCollisions = true;
      };

  # ---- scripts, processes, enterShell ---------------------------------------------
  processScripts = builtins.mapAttrs
    (n: p: pkgs.writeShellScriptBin "nixcell-process-${n}" p.exec)
    processes;

  scriptBins = builtins.mapAttrs (n: s: pkgs.writeShellScriptBin n s.exec) scripts;

  # Runs enterShell in the cell's shell, its output on stderr (the command's stdout
  # stays the command's), then the command with what enterShell exported.
  enterShellScript = pkgs.writeShellScriptBin "nixcell-enter-shell" ''
    . ${pkgs.writeText "enterShell" enterShell} >&2 || exit $?
    exec "$@"
  '';

  # ---- postgres ----------------------------------------------------------------------
  q = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";
  sqlIdent = s: "\"" + builtins.replaceStrings [ "\"" ] [ "\"\"" ] s + "\"";
  sqlString = s: "'" + builtins.replaceStrings [ "'" ] [ "''" ] s + "'";
  postgresql = pkgs.postgresql;
  pgRun = "/tmp/postgres";
  pgHost = if pgListen == "" then pgRun else "127.0.0.1";
  psql = "psql -X -q -v ON_ERROR_STOP=1";
  createDatabases = builtins.concatStringsSep "\n" (map
    (d:
      let
        user = opt d "user";
        role = pkgs.writeText "create-role.sql"
          "CREATE ROLE ${sqlIdent user} WITH LOGIN${if opt d "pass" != null then " PASSWORD ${sqlString d.pass}" else ""};\n";
        db = pkgs.writeText "create-database.sql"
          "CREATE DATABASE ${sqlIdent d.name}${if user != null then " OWNER ${sqlIdent user}" else ""};\n";
      in
      (if user != null then "${psql} -d postgres -f ${role}\n" else "")
      + "${psql} -d postgres -f ${db}\n"
      + (if opt d "initialSQL" != null then "${psql} -d ${q d.name} -f ${pkgs.writeText "initial.sql" d.initialSQL}\n" else "")
      + (if opt d "schema" != null then ''
        if [ -d ${d.schema} ]; then
          for f in ${d.schema}/*.sql; do ${psql} -d ${q d.name} -f "$f"; done
        else
          ${psql} -d ${q d.name} -f ${d.schema}
        fi
      '' else ""))
    pgDatabases);
  # In a cell of `nixcell up` (NIXCELL_SESSION set) with a writable /work, the project, redis
  # keeps its data in the project's .devenv/state/redis, as devenv does (saved when it
  # is stopped; the copy-on-write workdir lands it at `down`); a one-shot run starts
  # empty and keeps nothing.
  redisStart = pkgs.writeShellScriptBin "nixcell-redis" ''
    set -eu
    args="--port ${toString redisPort} --bind 127.0.0.1 --appendonly no"
    dir=/work/.devenv/state/redis
    if [ -n "''${NIXCELL_SESSION:-}" ] && ${pkgs.coreutils}/bin/mkdir -p "$dir" 2> /dev/null; then
      exec ${pkgs.redis}/bin/redis-server $args --save "3600 1" --dir "$dir"
    fi
    exec ${pkgs.redis}/bin/redis-server $args --save "" --dir /tmp
  '';
  # initdb into the cell's private /tmp, set up on the unix socket alone, then the
  # server on the socket and 127.0.0.1:PORT: accepting TCP means it is set up.
  pgStart = pkgs.writeShellScriptBin "nixcell-postgres" ''
    set -eu
    PATH=${postgresql}/bin:${pkgs.coreutils}/bin''${PATH:+:$PATH}
    PGDATA=${pgRun}/data PGHOST=${pgRun} PGPORT=${toString pgPort}
    export PATH PGDATA PGHOST PGPORT
    mkdir -p ${pgRun}
    initdb --locale=C --encoding=UTF8 --auth=trust --no-sync -D "$PGDATA" > /dev/null
    printf '%s\n' "listen_addresses = '127.0.0.1'" "port = ${toString pgPort}" \
      "unix_socket_directories = '${pgRun}'" "dynamic_shared_memory_type = mmap" >> "$PGDATA/postgresql.conf"
    pg_ctl -D "$PGDATA" -w -s -o "-c listen_addresses='''" start
    ${if pgDatabases == [ ] && pgCreateDb then ''createdb -- "$(id -un)"'' else ""}
    ${createDatabases}
    ${if pgScript != null then "${psql} -d postgres -f ${pkgs.writeText "initial-script.sql" pgScript}" else ""}
    pg_ctl -D "$PGDATA" -m fast -w -s stop
    exec postgres -D "$PGDATA"
  '';
  pgEnv = if pgEnabled then { PGDATA = "${pgRun}/data"; PGHOST = pgHost; PGPORT = toString pgPort; } else { };

  envValue = v: if builtins.isBool v then (if v then "1" else "") else toString v;

  env = pkgs.buildEnv {
    name = "nixcell-env";
    paths = packages
      ++ (if python == null then [ ] else [ python ])
      ++ (if redisEnabled then [ pkgs.redis redisStart ] else [ ])
      ++ (if pgEnabled then [ postgresql pgStart ] else [ ])
      ++ (if enterShell == "" then [ ] else [ enterShellScript ])
      ++ builtins.attrValues scriptBins
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
        libraries = legacyLibs;
        native_libraries = map (p: p.pname or (builtins.parseDrvName p.name).name) nativeLibs;
        package = py ? package;
      };
      services =
        (if redisEnabled then [{
          name = "redis";
          port = redisPort;
          command = [ "${redisStart}/bin/nixcell-redis" ];
        }] else [ ])
        ++ (if pgEnabled then [{
          name = "postgres";
          port = pgPort;
          # initdb and the set-up run before it listens.
          ready_timeout_ms = 60000;
          command = [ "${pgStart}/bin/nixcell-postgres" ];
        }] else [ ]);
      processes = map
        (n: {
          name = n;
          exec = processes.${n}.exec;
          ports = map (pn: processes.${n}.ports.${pn}.allocate) (builtins.attrNames (processPorts n));
          command = [ "${processScripts.${n}}/bin/nixcell-process-${n}" ];
        })
        (builtins.attrNames processes);
      warnings =
        if legacyLibs == [ ] then [ ]
        else [ "${file}: languages.python.libraries = [ ${builtins.concatStringsSep " " (map (n: "\"${n}\"") legacyLibs)} ] is nixcell's old form (devenv reads libraries as native library packages); nixcell still reads it, and its next Python library edit rewrites it as languages.python.package = pkgs.python3.withPackages (ps: [ ${builtins.concatStringsSep " " (map (n: "ps.${n}") legacyLibs)} ])" ];
      scripts = map (n: { name = n; description = scripts.${n}.description or ""; }) (builtins.attrNames scripts);
      enter_shell = if enterShell == "" then null else [ "${enterShellScript}/bin/nixcell-enter-shell" ];
      env = pgEnv // builtins.mapAttrs (n: v: envValue v) envVars;
    };
}
