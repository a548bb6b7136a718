//! A check, by syntax, of a `devenv.nix` against devenv's documented option types: every
//! file nixcell's edits write must be one devenv accepts.
//!
//! The types are those of devenv's option reference (docs/src/reference/options.md of
//! devenv 2.2.3, repository cachix/devenv at commit 5844e78c), for the options nixcell
//! reads and writes. A value is judged by its syntax: a literal must be of the option's
//! type; any other expression (`pkgs.jq`, `pkgs.python3.withPackages (...)`) counts as
//! a package, which devenv's `package` and `path` types both take.

use rnix::{SyntaxKind, SyntaxNode};

/// devenv's option types, as far as syntax tells them apart.
#[derive(Debug, Clone, Copy)]
enum Ty {
    /// `boolean`
    Bool,
    /// `16 bit unsigned integer; between 0 and 65535 (both inclusive)`
    Port,
    /// `string`, and `strings concatenated with "\n"`
    Str,
    /// `package`
    Package,
    /// `absolute path`: a path literal, a string starting with `/` or an
    /// interpolation, or a package (its store path)
    AbsPath,
    /// `null or T`
    NullOr(&'static Ty),
    /// `list of T`
    ListOf(&'static Ty),
    /// `list of (submodule)` with these options
    ListOfSubmodule(&'static [(&'static str, Ty)]),
    /// `attribute set of (submodule)` with these options (`scripts.<name>`, ...)
    Named(&'static [(&'static str, Ty)]),
    /// `open submodule of lazy attribute set of anything` (`env`)
    AnyAttrs,
}

const DATABASE: &[(&str, Ty)] = &[
    ("name", Ty::Str),
    ("user", Ty::NullOr(&Ty::Str)),
    ("pass", Ty::NullOr(&Ty::Str)),
    ("initialSQL", Ty::NullOr(&Ty::Str)),
    ("schema", Ty::NullOr(&Ty::AbsPath)),
];

const SCRIPT: &[(&str, Ty)] = &[("exec", Ty::Str), ("description", Ty::Str)];
const PROCESS: &[(&str, Ty)] = &[("exec", Ty::Str)];

/// The options nixcell supports, with devenv's type of each.
const OPTIONS: &[(&str, Ty)] = &[
    ("packages", Ty::ListOf(&Ty::Package)),
    ("languages.python.enable", Ty::Bool),
    ("languages.python.package", Ty::Package),
    ("languages.python.version", Ty::NullOr(&Ty::Str)),
    ("languages.python.libraries", Ty::ListOf(&Ty::AbsPath)),
    ("services.redis.enable", Ty::Bool),
    ("services.redis.port", Ty::Port),
    ("services.postgres.enable", Ty::Bool),
    ("services.postgres.port", Ty::Port),
    ("services.postgres.listen_addresses", Ty::Str),
    ("services.postgres.createDatabase", Ty::Bool),
    ("services.postgres.initialScript", Ty::NullOr(&Ty::Str)),
    (
        "services.postgres.initialDatabases",
        Ty::ListOfSubmodule(DATABASE),
    ),
    ("scripts", Ty::Named(SCRIPT)),
    ("processes", Ty::Named(PROCESS)),
    ("enterShell", Ty::Str),
    ("env", Ty::AnyAttrs),
];

fn inner(mut n: SyntaxNode) -> SyntaxNode {
    while n.kind() == SyntaxKind::NODE_PAREN {
        match n.children().last() {
            Some(c) => n = c,
            None => break,
        }
    }
    n
}

fn names(entry: &SyntaxNode) -> Option<Vec<String>> {
    let path = entry
        .children()
        .find(|c| c.kind() == SyntaxKind::NODE_ATTRPATH)?;
    path.children()
        .map(|p| match p.kind() {
            SyntaxKind::NODE_IDENT => Some(p.text().to_string()),
            SyntaxKind::NODE_STRING => Some(p.text().to_string().trim_matches('"').to_string()),
            _ => None,
        })
        .collect()
}

/// `(dotted path, value)` of every binding of an attribute set, nested sets flattened.
fn bindings(set: &SyntaxNode, prefix: &str, out: &mut Vec<(String, SyntaxNode)>) {
    for entry in set
        .children()
        .filter(|c| c.kind() == SyntaxKind::NODE_ATTRPATH_VALUE)
    {
        let (Some(ns), Some(value)) = (names(&entry), entry.children().last()) else {
            out.push((format!("{prefix}<dynamic>"), entry));
            continue;
        };
        let path = format!("{prefix}{}", ns.join("."));
        let value = inner(value);
        if OPTIONS.iter().any(|(o, _)| *o == path) || value.kind() != SyntaxKind::NODE_ATTR_SET {
            out.push((path, value));
        } else {
            bindings(&value, &format!("{path}."), out);
        }
    }
}

fn is_ident(n: &SyntaxNode, word: &str) -> bool {
    n.kind() == SyntaxKind::NODE_IDENT && n.text() == word
}

fn is_string(n: &SyntaxNode) -> bool {
    n.kind() == SyntaxKind::NODE_STRING
}

/// Whether `n` can only be a value of devenv's `package` type: an expression that
/// is no literal (a select, an application, a variable other than true/false/null).
fn is_package_expr(n: &SyntaxNode) -> bool {
    match n.kind() {
        SyntaxKind::NODE_SELECT | SyntaxKind::NODE_APPLY => true,
        SyntaxKind::NODE_IDENT => {
            !["true", "false", "null"].contains(&n.text().to_string().as_str())
        }
        _ => false,
    }
}

fn check(ty: Ty, n: &SyntaxNode, at: &str, errors: &mut Vec<String>) {
    let n = inner(n.clone());
    let mut bad = |what: &str| errors.push(format!("`{at}`: {what}, got `{}`", n.text()));
    match ty {
        Ty::Bool => {
            if !is_ident(&n, "true") && !is_ident(&n, "false") {
                bad("a boolean");
            }
        }
        Ty::Port => {
            let ok = n.kind() == SyntaxKind::NODE_LITERAL
                && n.text()
                    .to_string()
                    .parse::<u32>()
                    .is_ok_and(|p| p <= 65535);
            if !ok {
                bad("a 16 bit unsigned integer");
            }
        }
        Ty::Str => {
            if !is_string(&n) {
                bad("a string");
            }
        }
        Ty::Package => {
            if !is_package_expr(&n) {
                bad("a package");
            }
        }
        Ty::AbsPath => {
            let t = n.text().to_string();
            let ok = n.kind() == SyntaxKind::NODE_PATH_ABS
                || (is_string(&n) && (t.starts_with("\"/") || t.starts_with("\"${")))
                || is_package_expr(&n);
            if !ok {
                bad("an absolute path");
            }
        }
        Ty::NullOr(t) => {
            if !is_ident(&n, "null") {
                check(*t, &n, at, errors);
            }
        }
        Ty::ListOf(t) => {
            if n.kind() != SyntaxKind::NODE_LIST {
                return bad("a list");
            }
            for e in n.children() {
                check(*t, &e, &format!("{at}.*"), errors);
            }
        }
        Ty::ListOfSubmodule(fields) => {
            if n.kind() != SyntaxKind::NODE_LIST {
                return bad("a list");
            }
            for e in n.children() {
                check_set(fields, &inner(e), &format!("{at}.*"), errors);
            }
        }
        Ty::Named(fields) => {
            if n.kind() != SyntaxKind::NODE_ATTR_SET {
                return bad("an attribute set");
            }
            let mut found = Vec::new();
            bindings(&n, "", &mut found);
            // `name.exec = ...` and `name = { exec = ...; }` alike.
            for (path, v) in found {
                match path.split_once('.') {
                    Some((name, field)) => {
                        check_field(fields, field, &v, &format!("{at}.{name}"), errors)
                    }
                    None => check_set(fields, &v, &format!("{at}.{path}"), errors),
                }
            }
        }
        Ty::AnyAttrs => {
            if n.kind() != SyntaxKind::NODE_ATTR_SET {
                bad("an attribute set");
            }
        }
    }
}

fn check_field(
    fields: &[(&str, Ty)],
    field: &str,
    v: &SyntaxNode,
    at: &str,
    errors: &mut Vec<String>,
) {
    match fields.iter().find(|(f, _)| *f == field) {
        Some((_, t)) => check(*t, v, &format!("{at}.{field}"), errors),
        None => errors.push(format!("`{at}.{field}`: no such option")),
    }
}

fn check_set(fields: &[(&str, Ty)], n: &SyntaxNode, at: &str, errors: &mut Vec<String>) {
    if n.kind() != SyntaxKind::NODE_ATTR_SET {
        return errors.push(format!(
            "`{at}`: a submodule (attribute set), got `{}`",
            n.text()
        ));
    }
    let mut found = Vec::new();
    bindings(n, "", &mut found);
    for (field, v) in found {
        check_field(fields, &field, &v, at, errors);
    }
}

/// Every binding of `text` whose value does not have devenv's type (or that is no
/// option nixcell supports).
pub fn type_errors(text: &str) -> Vec<String> {
    let root = rnix::Root::parse(text);
    if let Some(e) = root.errors().first() {
        return vec![format!("does not parse: {e}")];
    }
    let mut node = root.syntax().children().next();
    while let Some(n) = node.clone() {
        match n.kind() {
            SyntaxKind::NODE_LAMBDA
            | SyntaxKind::NODE_LET_IN
            | SyntaxKind::NODE_PAREN
            | SyntaxKind::NODE_WITH => node = n.children().last(),
            _ => break,
        }
    }
    let Some(set) = node.filter(|n| n.kind() == SyntaxKind::NODE_ATTR_SET) else {
        return vec!["the file is not an attribute set (or a function returning one)".into()];
    };
    let mut found = Vec::new();
    bindings(&set, "", &mut found);
    let mut errors = Vec::new();
    for (path, v) in found {
        let top = OPTIONS
            .iter()
            .find(|(o, _)| *o == path || path.starts_with(&format!("{o}.")));
        match top {
            Some((o, ty)) if *o == path => check(*ty, &v, o, &mut errors),
            // `scripts.hello.exec = ...`: a named option bound by a longer path.
            Some((o, Ty::Named(fields))) => {
                let rest = &path[o.len() + 1..];
                match rest.split_once('.') {
                    Some((name, field)) => {
                        check_field(fields, field, &v, &format!("{o}.{name}"), &mut errors)
                    }
                    None => check_set(fields, &v, &format!("{o}.{rest}"), &mut errors),
                }
            }
            Some((o, Ty::AnyAttrs)) if *o == "env" => {}
            _ => errors.push(format!("`{path}`: not an option nixcell supports")),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::{Op, apply_to_text};

    const DEVENV_STYLE: &str = r#"{ pkgs, lib, config, inputs, ... }:

{
  env.GREET = "devenv";
  packages = [ pkgs.git ];
  languages.python = {
    enable = true;
    package = pkgs.python3.withPackages (ps: [ ps.psycopg2 ]);
    libraries = [ pkgs.file ];
  };
  scripts.hello.exec = ''
    echo hello from $GREET
  '';
  enterShell = ''
    hello
  '';
  services.postgres = {
    enable = true;
    port = 5433;
    initialDatabases = [ { name = "shop"; } ];
    initialScript = "CREATE ROLE agent;";
  };
}
"#;

    const SEED: &str = "# An agent's workspace.\n{ pkgs, ... }:\n{\n  packages = [\n    pkgs.busybox # sh\n  ];\n\n  languages.python = {\n    enable = true;\n  };\n\n  env.REPORT_NAME = \"quarterly\";\n}\n";

    const OLD_FORM: &str = "{ pkgs, ... }:\n{\n  languages.python = {\n    enable = true;\n    version = \"3.11\";\n    libraries = [ \"pandas\" ];\n  };\n}\n";

    #[test]
    fn the_checker_knows_devenv_from_the_old_form() {
        assert_eq!(type_errors(DEVENV_STYLE), Vec::<String>::new());
        assert_eq!(type_errors(SEED), Vec::<String>::new());
        // The old nixcell form is what devenv refuses: a name is no absolute path.
        let e = type_errors(OLD_FORM);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("languages.python.libraries.*") && e[0].contains("absolute path"),
            "{e:?}"
        );
        for bad in [
            "{ services.redis.port = 70000; }",
            "{ services.redis.enable = \"yes\"; }",
            "{ packages = [ \"jq\" ]; }",
            "{ languages.python.package = [ ]; }",
            "{ services.postgres.initialDatabases = [ { name = 1; } ]; }",
            "{ scripts.hello.run = \"x\"; }",
            "{ languages.rust.enable = true; }",
        ] {
            assert!(!type_errors(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn every_edit_leaves_a_file_devenv_accepts() {
        let edits: &[(Op, &str)] = &[
            (Op::AddPythonLibrary, "pandas"),
            (Op::AddPythonLibrary, "openpyxl"),
            (Op::AddPackage, "jq"),
            (Op::EnableService, "redis"),
            (Op::EnableService, "postgres"),
            (Op::RemovePythonLibrary, "pandas"),
            (Op::DisableService, "redis"),
            (Op::RemovePackage, "jq"),
        ];
        for start in [SEED, OLD_FORM, DEVENV_STYLE] {
            let mut text = start.to_string();
            for (op, name) in edits {
                text = match apply_to_text("devenv.nix", &text, *op, name) {
                    Ok(t) => t,
                    // Already so (postgres in the devenv-style file).
                    Err(crate::edit::EditError::Cst(crate::edit::cst::CstError::NoChange {
                        ..
                    })) => continue,
                    Err(e) => panic!("{op:?} {name} on\n{text}\n{e}"),
                };
                let errors = type_errors(&text);
                assert!(errors.is_empty(), "{op:?} {name} left\n{text}\n{errors:?}");
            }
            assert!(text.contains("withPackages"), "{text}");
        }
    }
}
