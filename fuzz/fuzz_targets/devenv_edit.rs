//! devenv.nix and every typed edit: an edit either errors, or yields a file that
//! parses and differs from the original only inside the edited binding (or where a
//! missing one is inserted): every other binding, comment and blank is byte-identical.
//!
//! Input: one byte choosing the edit, the name up to the first newline, then the file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nixcell::edit::cst::Doc;
use nixcell::edit::{Op, apply_to_text, policy};
use rnix::{SyntaxKind, SyntaxNode};

/// The bindings of a file: (full attribute path, or None if a name is dynamic; range).
fn bindings(text: &str) -> Vec<(Option<Vec<String>>, usize, usize)> {
    let root = rnix::Root::parse(text).syntax();
    let mut out = Vec::new();
    for n in root.descendants() {
        if n.kind() != SyntaxKind::NODE_ATTRPATH_VALUE {
            continue;
        }
        let mut chain: Vec<SyntaxNode> = n
            .ancestors()
            .filter(|a| a.kind() == SyntaxKind::NODE_ATTRPATH_VALUE)
            .collect();
        chain.reverse();
        let mut path = Some(Vec::new());
        for b in &chain {
            let names = b
                .children()
                .find(|c| c.kind() == SyntaxKind::NODE_ATTRPATH)
                .and_then(|p| names(&p));
            path = match (path, names) {
                (Some(mut p), Some(more)) => {
                    p.extend(more);
                    Some(p)
                }
                _ => None,
            };
        }
        let r = n.text_range();
        out.push((path, usize::from(r.start()), usize::from(r.end())));
    }
    out
}

fn names(path: &SyntaxNode) -> Option<Vec<String>> {
    path.children()
        .map(|part| match part.kind() {
            SyntaxKind::NODE_IDENT => Some(part.text().to_string()),
            SyntaxKind::NODE_STRING => {
                let t = part.text().to_string();
                let inner = t.strip_prefix('"')?.strip_suffix('"')?;
                (!inner.contains(['\\', '$'])).then(|| inner.to_string())
            }
            _ => None,
        })
        .collect()
}

fn compatible(a: &[String], b: &[String]) -> bool {
    a.iter().zip(b).all(|(x, y)| x == y)
}

/// Whether the change [s, e) of `old` stays inside bindings on `target`'s path.
fn confined(old: &str, s: usize, e: usize, target: &[String]) -> bool {
    bindings(old).iter().all(|(path, rs, re)| {
        let overlaps = if s < e {
            s < *re && e > *rs
        } else {
            *rs < s && s < *re
        };
        !overlaps || path.as_deref().is_some_and(|p| compatible(p, target))
    })
}

/// The changed range of `old` by the longest common prefix, then suffix (or the
/// other way round when `suffix_first`).
fn changed(old: &str, new: &str, suffix_first: bool) -> (usize, usize) {
    let (a, b) = (old.as_bytes(), new.as_bytes());
    let pre = |lim: usize| {
        a.iter()
            .zip(b)
            .take(lim)
            .take_while(|(x, y)| x == y)
            .count()
    };
    let suf = |lim: usize| {
        a.iter()
            .rev()
            .zip(b.iter().rev())
            .take(lim)
            .take_while(|(x, y)| x == y)
            .count()
    };
    let m = a.len().min(b.len());
    if suffix_first {
        let s = suf(m);
        let p = pre(m - s);
        (p, a.len() - s)
    } else {
        let p = pre(m);
        let s = suf(m - p);
        (p, a.len() - s)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let (name, old) = rest.split_once('\n').unwrap_or((rest, ""));
    let op = Op::ALL[which as usize % Op::ALL.len()];
    // allow-domain edits nixcell.toml, not the declaration.
    if op == Op::AllowDomain {
        return;
    }
    // Names reach the syntax tree only after the grammar check, as in `nixcell edit`.
    if policy::check_name(op.subject(), name).is_err() || Doc::parse("devenv.nix", old).is_err() {
        return;
    }
    let Ok(new) = apply_to_text("devenv.nix", old, op, name) else {
        return;
    };
    if let Err(e) = Doc::parse("devenv.nix", &new) {
        panic!("{op:?} {name}: the edited file does not parse: {e}\n{new}");
    }
    assert_ne!(
        old, new,
        "{op:?} {name}: an edit that changes nothing succeeded"
    );
    let target: Vec<String> = match op {
        Op::AddPackage | Op::RemovePackage => vec!["packages".into()],
        Op::AddPythonLibrary | Op::RemovePythonLibrary => {
            vec!["languages".into(), "python".into()]
        }
        Op::EnableService | Op::DisableService => {
            vec!["services".into(), name.into(), "enable".into()]
        }
        Op::AllowDomain => return,
    };
    let ok = [false, true].into_iter().any(|suffix_first| {
        let (s, e) = changed(old, &new, suffix_first);
        confined(old, s, e, &target)
    });
    assert!(
        ok,
        "{op:?} {name}: changed outside {target:?}\n--- old\n{old}\n--- new\n{new}"
    );
});
