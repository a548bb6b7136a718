//! Edits of `devenv.nix` through its concrete syntax tree (rnix). Every change is a
//! replacement of a text range that the tree gives (a binding's value, the inside of a
//! list or an attribute set), so formatting and comments elsewhere stay byte-identical.

use rnix::{NodeOrToken, SyntaxKind, SyntaxNode, TextRange, TextSize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CstError {
    #[error("{file} does not parse: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {message}")]
    Shape { file: String, message: String },
    #[error("{file}: nothing to do: {message}")]
    NoChange { file: String, message: String },
}

/// What a list element is, to write and to recognise it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A package attribute path `pkgs.NAME` (plain `NAME` inside `with pkgs;`).
    Package(String),
    /// A string literal `"NAME"`.
    Str(String),
    /// An attribute `NS.NAME` of a function's argument (plain `NAME` inside `with NS;`),
    /// e.g. `ps.pandas` in `withPackages (ps: [ ... ])`.
    Member(String, String),
}

/// A Nix source text and its tree.
pub struct Doc {
    file: String,
    text: String,
}

enum Found {
    /// The binding's value node.
    Value(SyntaxNode),
    /// No binding: `set` is the innermost attribute set on the way, `rest` the path
    /// still missing below it.
    Missing { set: SyntaxNode, rest: Vec<String> },
}

fn first_token_is(node: &SyntaxNode, kind: SyntaxKind) -> bool {
    node.children_with_tokens()
        .find(|c| c.kind() != SyntaxKind::TOKEN_WHITESPACE && c.kind() != SyntaxKind::TOKEN_COMMENT)
        .is_some_and(|c| c.kind() == kind)
}

/// Static names of an attribute path (`a.b."c"`), or None if one is dynamic.
fn attrpath_names(path: &SyntaxNode) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for part in path.children() {
        match part.kind() {
            SyntaxKind::NODE_IDENT => out.push(part.text().to_string()),
            SyntaxKind::NODE_STRING => {
                let mut s = String::new();
                for t in part.children_with_tokens() {
                    match t.kind() {
                        SyntaxKind::TOKEN_STRING_START | SyntaxKind::TOKEN_STRING_END => {}
                        SyntaxKind::TOKEN_STRING_CONTENT => s.push_str(&t.to_string()),
                        _ => return None,
                    }
                }
                out.push(s);
            }
            _ => return None,
        }
    }
    Some(out)
}

fn last_child_node(n: &SyntaxNode) -> Option<SyntaxNode> {
    n.children().last()
}

/// The whitespace at the start of the line where `offset` is.
fn indent_at(text: &str, offset: usize) -> String {
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    text[line_start..]
        .chars()
        .take_while(|c| *c == ' ' || *c == '\t')
        .collect()
}

/// The namespaces of the `with NS;` a list is under.
type Withs = Vec<String>;

fn item_text(item: &Item, withs: &[String]) -> String {
    match item {
        Item::Package(n) => item_text(&Item::Member("pkgs".into(), n.clone()), withs),
        Item::Member(ns, n) if withs.contains(ns) => n.clone(),
        Item::Member(ns, n) => format!("{ns}.{n}"),
        Item::Str(s) => format!("\"{s}\""),
    }
}

/// `F.withPackages (P: BODY)`: the lambda's parameter and its body.
fn with_packages(node: &SyntaxNode) -> Option<(String, SyntaxNode)> {
    let mut parts = node.children();
    let (f, mut arg) = (parts.next()?, parts.next()?);
    let path = f
        .children()
        .find(|c| c.kind() == SyntaxKind::NODE_ATTRPATH)?;
    if f.kind() != SyntaxKind::NODE_SELECT
        || attrpath_names(&path)?.last().map(String::as_str) != Some("withPackages")
    {
        return None;
    }
    while arg.kind() == SyntaxKind::NODE_PAREN {
        arg = last_child_node(&arg)?;
    }
    if arg.kind() != SyntaxKind::NODE_LAMBDA {
        return None;
    }
    let param = arg.children().next()?;
    if param.kind() != SyntaxKind::NODE_IDENT_PARAM {
        return None;
    }
    Some((param.text().to_string(), last_child_node(&arg)?))
}

fn compact(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

impl Doc {
    pub fn parse(file: &str, text: &str) -> Result<Doc, CstError> {
        let parse = rnix::Root::parse(text);
        if let Some(e) = parse.errors().first() {
            return Err(CstError::Parse {
                file: file.to_string(),
                message: e.to_string(),
            });
        }
        Ok(Doc {
            file: file.to_string(),
            text: text.to_string(),
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    fn root(&self) -> SyntaxNode {
        rnix::Root::parse(&self.text).syntax()
    }

    fn shape(&self, message: impl Into<String>) -> CstError {
        CstError::Shape {
            file: self.file.clone(),
            message: message.into(),
        }
    }

    fn no_change(&self, message: impl Into<String>) -> CstError {
        CstError::NoChange {
            file: self.file.clone(),
            message: message.into(),
        }
    }

    /// Replaces `range` with `with`, re-parsing to make sure the result is valid Nix.
    fn splice(&mut self, range: TextRange, with: &str) -> Result<(), CstError> {
        let (s, e) = (usize::from(range.start()), usize::from(range.end()));
        let mut next = String::with_capacity(self.text.len() + with.len());
        next.push_str(&self.text[..s]);
        next.push_str(with);
        next.push_str(&self.text[e..]);
        let parse = rnix::Root::parse(&next);
        if let Some(err) = parse.errors().first() {
            return Err(self.shape(format!("the edit would not parse ({err})")));
        }
        self.text = next;
        Ok(())
    }

    /// The attribute set the file evaluates to: through `{ ... }:`, `let ... in`,
    /// parentheses and `with`.
    fn top_set(&self) -> Result<SyntaxNode, CstError> {
        let mut node = self
            .root()
            .children()
            .next()
            .ok_or_else(|| self.shape("the file is empty"))?;
        loop {
            match node.kind() {
                SyntaxKind::NODE_ATTR_SET => return Ok(node),
                SyntaxKind::NODE_LAMBDA
                | SyntaxKind::NODE_LET_IN
                | SyntaxKind::NODE_PAREN
                | SyntaxKind::NODE_WITH => {
                    node = last_child_node(&node).ok_or_else(|| self.shape("incomplete"))?
                }
                _ => {
                    return Err(self.shape(
                        "the top level is not an attribute set (or a function returning one)",
                    ));
                }
            }
        }
    }

    fn find(&self, set: SyntaxNode, path: &[String]) -> Result<Found, CstError> {
        let dotted = path.join(".");
        for entry in set.children() {
            if entry.kind() != SyntaxKind::NODE_ATTRPATH_VALUE {
                continue;
            }
            let Some(names) = entry
                .children()
                .find(|c| c.kind() == SyntaxKind::NODE_ATTRPATH)
                .and_then(|p| attrpath_names(&p))
            else {
                continue;
            };
            let Some(value) = last_child_node(&entry) else {
                continue;
            };
            if names.as_slice() == path {
                return Ok(Found::Value(value));
            }
            if path.starts_with(&names) {
                if value.kind() == SyntaxKind::NODE_ATTR_SET
                    && !first_token_is(&value, SyntaxKind::TOKEN_REC)
                {
                    return self.find(value, &path[names.len()..]);
                }
                return Err(self.shape(format!(
                    "`{}` is not a plain attribute set; edit `{dotted}` by hand",
                    names.join(".")
                )));
            }
            if names.starts_with(path) {
                return Err(self.shape(format!(
                    "`{dotted}` is set through `{}`; edit it by hand",
                    names.join(".")
                )));
            }
        }
        Ok(Found::Missing {
            set,
            rest: path.to_vec(),
        })
    }

    fn lookup(&self, path: &[&str]) -> Result<Found, CstError> {
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        self.find(self.top_set()?, &path)
    }

    /// Text range of the inside of a bracketed node, `{`..`}` or `[`..`]`, and the
    /// offset of its closing token.
    fn closing(node: &SyntaxNode, kind: SyntaxKind) -> Option<TextSize> {
        node.children_with_tokens()
            .filter(|c| c.kind() == kind)
            .last()
            .map(|c| c.text_range().start())
    }

    /// Adds `text` as the last element of the bracketed `node` (attribute set or list),
    /// on a line of its own when the node spans lines.
    fn append_in(
        &mut self,
        node: &SyntaxNode,
        close: SyntaxKind,
        text: &str,
    ) -> Result<(), CstError> {
        let end = Self::closing(node, close).ok_or_else(|| self.shape("incomplete"))?;
        let end_u = usize::from(end);
        let elems: Vec<SyntaxNode> = node.children().collect();
        let node_text = node.text().to_string();
        if node_text.contains('\n') {
            // Insert at the start of the closing bracket's line, with the last element's
            // indentation (or one level deeper than the bracket).
            let line_start = self.text[..end_u].rfind('\n').map(|i| i + 1).unwrap_or(0);
            let before_close = &self.text[line_start..end_u];
            let indent = match elems.last() {
                Some(last) => indent_at(&self.text, usize::from(last.text_range().start())),
                None => format!("{}  ", indent_at(&self.text, end_u)),
            };
            if before_close.trim().is_empty() {
                let at = TextSize::from(line_start as u32);
                return self.splice(TextRange::empty(at), &format!("{indent}{text}\n"));
            }
            return self.splice(TextRange::empty(end), &format!("\n{indent}{text}\n"));
        }
        match elems.last() {
            Some(last) => self.splice(
                TextRange::empty(last.text_range().end()),
                &format!(" {text}"),
            ),
            None => {
                let open = node
                    .children_with_tokens()
                    .find(|c| {
                        matches!(
                            c.kind(),
                            SyntaxKind::TOKEN_L_BRACE | SyntaxKind::TOKEN_L_BRACK
                        )
                    })
                    .ok_or_else(|| self.shape("incomplete"))?;
                let range = TextRange::new(open.text_range().end(), end);
                self.splice(range, &format!(" {text} "))
            }
        }
    }

    fn insert_binding(
        &mut self,
        set: &SyntaxNode,
        rest: &[String],
        value: &str,
    ) -> Result<(), CstError> {
        let binding = format!("{} = {value};", rest.join("."));
        self.append_in(set, SyntaxKind::TOKEN_R_BRACE, &binding)
    }

    /// Sets the binding at `path` to the expression `value` (a literal nixcell writes).
    pub fn set_value(&mut self, path: &[&str], value: &str) -> Result<(), CstError> {
        match self.lookup(path)? {
            Found::Value(v) => {
                if v.text() == value {
                    return Err(self.no_change(format!("`{}` is already {value}", path.join("."))));
                }
                self.splice(v.text_range(), value)
            }
            Found::Missing { set, rest } => self.insert_binding(&set, &rest, value),
        }
    }

    /// The value text at `path`, if bound.
    pub fn value_text(&self, path: &[&str]) -> Result<Option<String>, CstError> {
        Ok(match self.lookup(path)? {
            Found::Value(v) => Some(v.text().to_string()),
            Found::Missing { .. } => None,
        })
    }

    /// The list literal at `path` (through `with NS;`, parentheses and the function of
    /// `X.withPackages (ps: [ ... ])`), and the namespaces of the `with`s it is under.
    fn list_at(&self, value: SyntaxNode, path: &[&str]) -> Result<(SyntaxNode, Withs), CstError> {
        let mut node = value;
        let mut withs = Vec::new();
        loop {
            match node.kind() {
                SyntaxKind::NODE_LIST => return Ok((node, withs)),
                SyntaxKind::NODE_PAREN => {
                    node = last_child_node(&node).ok_or_else(|| self.shape("incomplete"))?
                }
                SyntaxKind::NODE_WITH => {
                    if let Some(ns) = node.children().next() {
                        withs.push(ns.text().to_string());
                    }
                    node = last_child_node(&node).ok_or_else(|| self.shape("incomplete"))?
                }
                SyntaxKind::NODE_APPLY if with_packages(&node).is_some() => {
                    node = with_packages(&node).map(|(_, body)| body).unwrap_or(node)
                }
                _ => {
                    return Err(self.shape(format!(
                        "`{}` is not a list literal; edit it by hand",
                        path.join(".")
                    )));
                }
            }
        }
    }

    fn find_item(list: &SyntaxNode, item: &Item, withs: &[String]) -> Option<SyntaxNode> {
        let want = compact(&item_text(item, withs));
        // `pkgs.jq` also names jq inside `with pkgs;`.
        let alt = match item {
            Item::Package(_) | Item::Member(..) => Some(item_text(item, &[])),
            Item::Str(_) => None,
        };
        list.children().find(|c| {
            let t = compact(&c.text().to_string());
            t == want || alt.as_deref() == Some(t.as_str())
        })
    }

    /// The parameter of the function of `X.withPackages (P: ...)` bound at `path`: None
    /// when nothing is bound there, an error when something else is.
    pub fn with_packages_param(&self, path: &[&str]) -> Result<Option<String>, CstError> {
        let Found::Value(mut v) = self.lookup(path)? else {
            return Ok(None);
        };
        while v.kind() == SyntaxKind::NODE_PAREN {
            v = last_child_node(&v).ok_or_else(|| self.shape("incomplete"))?;
        }
        match (v.kind(), with_packages(&v)) {
            (SyntaxKind::NODE_APPLY, Some((param, _))) => Ok(Some(param)),
            _ => Err(self.shape(format!(
                "`{}` is not `pkgs.python3.withPackages (ps: [ ... ])`; edit it by hand",
                path.join(".")
            ))),
        }
    }

    /// The string literals of the list literal at `path` (none when nothing is bound
    /// there or it is not a list literal).
    pub fn string_items(&self, path: &[&str]) -> Result<Vec<String>, CstError> {
        let Found::Value(v) = self.lookup(path)? else {
            return Ok(Vec::new());
        };
        let Ok((list, _)) = self.list_at(v, path) else {
            return Ok(Vec::new());
        };
        Ok(list
            .children()
            .filter(|c| c.kind() == SyntaxKind::NODE_STRING)
            .filter_map(|c| {
                let t = c.text().to_string();
                let inner = t.strip_prefix('"')?.strip_suffix('"')?;
                (!inner.contains(['\\', '$', '"'])).then(|| inner.to_string())
            })
            .collect())
    }

    /// Removes the binding at `path` (the whole `a.b = ...;`, with the whitespace
    /// that led to it); it must be bound by its full name in its attribute set.
    pub fn remove_binding(&mut self, path: &[&str]) -> Result<(), CstError> {
        let Found::Value(v) = self.lookup(path)? else {
            return Err(self.no_change(format!("`{}` is not set", path.join("."))));
        };
        let entry = v
            .parent()
            .filter(|p| p.kind() == SyntaxKind::NODE_ATTRPATH_VALUE)
            .ok_or_else(|| self.shape(format!("cannot remove `{}`", path.join("."))))?;
        let mut start = entry.text_range().start();
        if let Some(NodeOrToken::Token(ws)) = entry.prev_sibling_or_token()
            && ws.kind() == SyntaxKind::TOKEN_WHITESPACE
        {
            start = match ws.text().rfind('\n') {
                Some(i) => ws.text_range().start() + TextSize::from(i as u32),
                None => ws.text_range().start(),
            };
        }
        self.splice(TextRange::new(start, entry.text_range().end()), "")
    }

    /// Adds `item` to the list at `path`, creating the binding if there is none.
    pub fn add_to_list(&mut self, path: &[&str], item: &Item) -> Result<(), CstError> {
        match self.lookup(path)? {
            Found::Value(v) => {
                let (list, withs) = self.list_at(v, path)?;
                if Self::find_item(&list, item, &withs).is_some() {
                    return Err(self.no_change(format!(
                        "{} is already in `{}`",
                        item_text(item, &withs),
                        path.join(".")
                    )));
                }
                self.append_in(&list, SyntaxKind::TOKEN_R_BRACK, &item_text(item, &withs))
            }
            Found::Missing { set, rest } => {
                let value = format!("[ {} ]", item_text(item, &[]));
                self.insert_binding(&set, &rest, &value)
            }
        }
    }

    /// Removes `item` from the list at `path` with the whitespace that led to it.
    pub fn remove_from_list(&mut self, path: &[&str], item: &Item) -> Result<(), CstError> {
        let missing = || {
            self.no_change(format!(
                "{} is not in `{}`",
                item_text(item, &[]),
                path.join(".")
            ))
        };
        let v = match self.lookup(path)? {
            Found::Value(v) => v,
            Found::Missing { .. } => return Err(missing()),
        };
        let (list, withs) = self.list_at(v, path)?;
        let node = Self::find_item(&list, item, &withs).ok_or_else(missing)?;
        let mut start = node.text_range().start();
        if let Some(NodeOrToken::Token(ws)) = node.prev_sibling_or_token()
            && ws.kind() == SyntaxKind::TOKEN_WHITESPACE
        {
            start = match ws.text().rfind('\n') {
                Some(i) => ws.text_range().start() + TextSize::from(i as u32),
                None => ws.text_range().start(),
            };
        }
        self.splice(TextRange::new(start, node.text_range().end()), "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(t: &str) -> Doc {
        Doc::parse("devenv.nix", t).unwrap()
    }

    #[test]
    fn adds_to_a_multiline_list_keeping_comments() {
        let mut d =
            doc("{ pkgs, ... }:\n{\n  # tools\n  packages = [\n    pkgs.jq # json\n  ];\n}\n");
        d.add_to_list(&["packages"], &Item::Package("ripgrep".into()))
            .unwrap();
        assert_eq!(
            d.text(),
            "{ pkgs, ... }:\n{\n  # tools\n  packages = [\n    pkgs.jq # json\n    pkgs.ripgrep\n  ];\n}\n"
        );
        d.remove_from_list(&["packages"], &Item::Package("jq".into()))
            .unwrap();
        assert_eq!(
            d.text(),
            "{ pkgs, ... }:\n{\n  # tools\n  packages = [ # json\n    pkgs.ripgrep\n  ];\n}\n"
        );
    }

    #[test]
    fn adds_to_inline_and_with_lists() {
        let mut d = doc("{ pkgs, ... }: { packages = with pkgs; [ jq ]; }");
        d.add_to_list(&["packages"], &Item::Package("ripgrep".into()))
            .unwrap();
        assert_eq!(
            d.text(),
            "{ pkgs, ... }: { packages = with pkgs; [ jq ripgrep ]; }"
        );
        let mut d = doc("{ pkgs, ... }: { packages = [ ]; }");
        d.add_to_list(&["packages"], &Item::Package("jq".into()))
            .unwrap();
        assert_eq!(d.text(), "{ pkgs, ... }: { packages = [ pkgs.jq ]; }");
        let err = d
            .add_to_list(&["packages"], &Item::Package("jq".into()))
            .unwrap_err();
        assert!(matches!(err, CstError::NoChange { .. }), "{err}");
    }

    #[test]
    fn creates_missing_bindings_in_the_right_set() {
        let src = "{ pkgs, ... }:\nlet x = 1; in\n{\n  languages.python = {\n    enable = false;\n  };\n  env.A = \"b\"; # keep\n}\n";
        let mut d = doc(src);
        d.add_to_list(
            &["languages", "python", "libraries"],
            &Item::Str("pandas".into()),
        )
        .unwrap();
        d.set_value(&["languages", "python", "enable"], "true")
            .unwrap();
        d.set_value(&["services", "redis", "enable"], "true")
            .unwrap();
        assert_eq!(
            d.text(),
            "{ pkgs, ... }:\nlet x = 1; in\n{\n  languages.python = {\n    enable = true;\n    libraries = [ \"pandas\" ];\n  };\n  env.A = \"b\"; # keep\n  services.redis.enable = true;\n}\n"
        );
    }

    #[test]
    fn refuses_what_it_cannot_edit_faithfully() {
        let mut d = doc("{ pkgs, ... }: { packages = base ++ [ pkgs.jq ]; }");
        assert!(
            d.add_to_list(&["packages"], &Item::Package("rg".into()))
                .is_err()
        );
        let mut d = doc("{ pkgs, ... }: { languages = import ./langs.nix; }");
        assert!(
            d.set_value(&["languages", "python", "enable"], "true")
                .is_err()
        );
        let mut d = doc("{ pkgs, ... }: { services.redis = { enable = true; }; }");
        assert!(matches!(
            d.set_value(&["services", "redis", "enable"], "true"),
            Err(CstError::NoChange { .. })
        ));
        assert!(Doc::parse("devenv.nix", "{ packages = [ ; }").is_err());
        let mut d = doc("pkgs: pkgs.mkShell { }");
        assert!(d.set_value(&["x"], "true").is_err());
    }
}
