//! What one Rust file says about other modules of its crate: its `mod`
//! declarations (with `#[path]`), its inline modules, and every path it
//! writes into a module (`use` trees, grouped or not, and paths inline in
//! code such as `crate::x::f()` or `super::Y`), each with its line.
//!
//! Paths are kept as written; [`super::modules`] resolves them against the
//! crate's module tree.

use super::source::{Tok, Token, lex};

/// A `mod name;` declaration (one with a body is an inline module instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModDecl {
    pub(crate) name: String,
    /// The inline modules (`mod a { mod b { ... } }`) it is declared inside.
    pub(crate) inline: Vec<String>,
    /// The value of a `#[path = "..."]` attribute on it.
    pub(crate) path_attr: Option<String>,
}

/// A path written in the file, as segments (`crate`, `super`, `self` kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathRef {
    /// The inline modules the path is written inside.
    pub(crate) scope: Vec<String>,
    /// The segments; a path starting with `::` (an external crate) starts
    /// with an empty segment, and a glob ends with `*`.
    pub(crate) segments: Vec<String>,
    pub(crate) line: usize,
}

/// Everything [`parse`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub(crate) mods: Vec<ModDecl>,
    /// Every inline module, as its path of inline module names.
    pub(crate) inline_mods: Vec<Vec<String>>,
    pub(crate) paths: Vec<PathRef>,
}

/// Scans one file's source (the caller cuts off its unit tests first).
pub(crate) fn parse(src: &str) -> Parsed {
    let tokens = lex(src);
    let mut parsed = Parsed::default();
    // Open inline modules, with the brace depth their body is at.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut path_attr: Option<String> = None;
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        let scope = || inline.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        match &t.tok {
            Tok::Punct('#') => {
                if let Some(p) = path_attribute(&tokens, i) {
                    path_attr = Some(p);
                }
                i += 1;
            }
            Tok::Punct('{') => {
                depth += 1;
                path_attr = None;
                i += 1;
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                path_attr = None;
                i += 1;
            }
            Tok::Punct(';') => {
                path_attr = None;
                i += 1;
            }
            Tok::Ident(kw) if kw == "mod" => {
                let name = tokens.get(i + 1).and_then(Token::ident);
                let after = tokens.get(i + 2);
                match (name, after) {
                    (Some(name), Some(a)) if a.is_punct(';') => {
                        parsed.mods.push(ModDecl {
                            name: name.to_owned(),
                            inline: scope(),
                            path_attr: path_attr.take(),
                        });
                        i += 3;
                    }
                    (Some(name), Some(a)) if a.is_punct('{') => {
                        depth += 1;
                        let mut path = scope();
                        path.push(name.to_owned());
                        parsed.inline_mods.push(path);
                        inline.push((name.to_owned(), depth));
                        path_attr = None;
                        i += 3;
                    }
                    _ => i += 1,
                }
            }
            // `impl Trait + use<'a>` captures lifetimes; it imports nothing.
            Tok::Ident(kw) if kw == "use" && tokens.get(i + 1).is_some_and(|t| t.is_punct('<')) => {
                i += 1;
            }
            Tok::Ident(kw) if kw == "use" => {
                let scope = scope();
                i += 1;
                let mut found = Vec::new();
                use_tree(&tokens, &mut i, Vec::new(), &mut found);
                for (segments, line) in found {
                    parsed.paths.push(PathRef {
                        scope: scope.clone(),
                        segments,
                        line,
                    });
                }
                // Up to and including the `;` (anything unexpected is skipped).
                while i < tokens.len() && !tokens[i].is_punct(';') {
                    i += 1;
                }
            }
            Tok::Ident(first) if starts_inline_path(&tokens, i) => {
                let mut segments = vec![first.clone()];
                let mut j = i + 1;
                while j + 1 < tokens.len() && tokens[j].is_path_sep() {
                    let Some(next) = tokens[j + 1].ident() else {
                        break;
                    };
                    segments.push(next.to_owned());
                    j += 2;
                }
                if segments.len() > 1 {
                    parsed.paths.push(PathRef {
                        scope: scope(),
                        segments,
                        line: t.line,
                    });
                }
                i = j;
            }
            _ => i += 1,
        }
    }
    parsed
}

/// Whether the identifier at `i` begins a path written in code: it is
/// followed by `::`, and is not itself the middle of a path (`a::b`), a
/// macro variable (`$crate`), a turbofish method (`x.collect::<T>()`) or a
/// visibility (`pub(in crate::a)`).
fn starts_inline_path(tokens: &[Token], i: usize) -> bool {
    if !tokens.get(i + 1).is_some_and(Token::is_path_sep) {
        return false;
    }
    let Some(prev) = i.checked_sub(1).map(|p| &tokens[p]) else {
        return true;
    };
    if prev.is_path_sep() || prev.is_punct('$') || prev.is_punct('.') {
        return false;
    }
    let in_visibility =
        prev.ident() == Some("in") && i.checked_sub(2).is_some_and(|p| tokens[p].is_punct('('));
    !in_visibility
}

/// The value of `#[path = "..."]` when the attribute at `i` is one.
fn path_attribute(tokens: &[Token], i: usize) -> Option<String> {
    let is = |k: usize, f: &dyn Fn(&Token) -> bool| tokens.get(i + k).is_some_and(f);
    if is(1, &|t| t.is_punct('['))
        && is(2, &|t| t.ident() == Some("path"))
        && is(3, &|t| t.is_punct('='))
        && is(5, &|t| t.is_punct(']'))
        && let Some(Token {
            tok: Tok::Str(s), ..
        }) = tokens.get(i + 4)
    {
        return Some(s.clone());
    }
    None
}

/// One use tree starting at `i` (`a::b::{c, d::*, e as f, self}`), with
/// `prefix` the segments of the groups it is inside; pushes each full path
/// and its line to `out` and leaves `i` after the tree.
fn use_tree(
    tokens: &[Token],
    i: &mut usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, usize)>,
) {
    let mut segments = prefix;
    if tokens.get(*i).is_some_and(Token::is_path_sep) {
        // `::name`: an external crate, never a module of this one.
        segments.push(String::new());
        *i += 1;
    }
    while let Some(t) = tokens.get(*i) {
        match &t.tok {
            Tok::Ident(name) => {
                segments.push(name.clone());
                *i += 1;
                if tokens.get(*i).is_some_and(Token::is_path_sep) {
                    *i += 1;
                    continue;
                }
                // `as alias` renames the last segment; the path stays.
                if tokens.get(*i).and_then(Token::ident) == Some("as") {
                    *i += 2;
                }
                out.push((segments, t.line));
                return;
            }
            Tok::Punct('*') => {
                segments.push("*".to_owned());
                *i += 1;
                out.push((segments, t.line));
                return;
            }
            Tok::Punct('{') => {
                *i += 1;
                loop {
                    match tokens.get(*i) {
                        None => return,
                        Some(t) if t.is_punct('}') => {
                            *i += 1;
                            return;
                        }
                        Some(t) if t.is_punct(',') => *i += 1,
                        Some(_) => {
                            let before = *i;
                            use_tree(tokens, i, segments.clone(), out);
                            if *i == before {
                                // Not a use tree after all: skip the token.
                                *i += 1;
                            }
                        }
                    }
                }
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(src: &str) -> Vec<String> {
        parse(src)
            .paths
            .into_iter()
            .map(|p| {
                let mut s = p.scope.join("/");
                if !s.is_empty() {
                    s.push('|');
                }
                s + &p.segments.join("::")
            })
            .collect()
    }

    #[test]
    fn grouped_uses_self_and_globs() {
        let got = paths(
            "pub(crate) use crate::{a::X, b::{Y, Z as W}, c::{self, *}};\nuse super::super::q;\nuse ::ext::E;",
        );
        assert_eq!(
            got,
            [
                "crate::a::X",
                "crate::b::Y",
                "crate::b::Z",
                "crate::c::self",
                "crate::c::*",
                "super::super::q",
                "::ext::E",
            ]
        );
    }

    #[test]
    fn inline_paths_in_code() {
        let got = paths(
            "fn f() { let x = crate::a::B::new(); super::c(); v.iter().collect::<Vec<_>>(); \
             std::mem::drop(x); $crate::m::n; }\npub(in crate::a) fn g() {}",
        );
        assert_eq!(got, ["crate::a::B::new", "super::c", "std::mem::drop"]);
        let got = paths("fn f<'a>() -> impl Sized + use<'a> { crate::a::g() }\nuse crate::b::H;");
        assert_eq!(got, ["crate::a::g", "crate::b::H"]);
    }

    #[test]
    fn modules_declared_inline_and_with_path() {
        let p = parse(
            "mod a;\npub(crate) mod b {\n    #[path = \"other.rs\"]\n    mod c;\n    use super::a::X;\n}\nmod d;",
        );
        assert_eq!(
            p.mods,
            [
                ModDecl {
                    name: "a".into(),
                    inline: vec![],
                    path_attr: None
                },
                ModDecl {
                    name: "c".into(),
                    inline: vec!["b".into()],
                    path_attr: Some("other.rs".into())
                },
                ModDecl {
                    name: "d".into(),
                    inline: vec![],
                    path_attr: None
                },
            ]
        );
        assert_eq!(p.inline_mods, [vec!["b".to_owned()]]);
        assert_eq!(p.paths[0].scope, ["b"]);
        assert_eq!(p.paths[0].line, 5);
    }
}
