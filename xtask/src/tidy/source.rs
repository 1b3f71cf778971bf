//! Reading Rust source for tidy: where a file's unit tests begin, and a small
//! lexer that keeps identifiers, `::`, punctuation and string literals (with
//! their line numbers) and drops comments, numbers, characters and lifetimes.
//!
//! It is not a Rust parser: it knows just enough to never mistake a comment,
//! a string or a character literal for code, which is all the import scan
//! needs.

/// The 0-based index of the first line of `src` that starts (at column 0)
/// with `#[cfg(test)]`: where a file's unit tests begin by convention.
/// Indented ones (a test-only method inside an `impl`) do not end the file's
/// real code, so they do not count.
pub(crate) fn test_start(src: &str) -> Option<usize> {
    // `#![cfg(test)]` (after the `//!` lines) makes the whole file a test
    // module: the `tests.rs` a parent declares as `#[cfg(test)] mod tests;`.
    src.lines()
        .position(|l| l.starts_with("#[cfg(test)]") || l.starts_with("#![cfg(test)]"))
}

/// `src` up to (not including) the line [`test_start`] finds.
pub(crate) fn before_tests(src: &str) -> &str {
    let Some(n) = test_start(src) else {
        return src;
    };
    let mut end = 0;
    for line in src.split_inclusive('\n').take(n) {
        end += line.len();
    }
    &src[..end]
}

/// What a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
    /// An identifier or keyword (`r#type` is `type`).
    Ident(String),
    /// The contents of a string literal, escapes left as written.
    Str(String),
    /// `::`.
    PathSep,
    /// Any other single character of punctuation.
    Punct(char),
    /// A number or a character literal: only there so that neighbouring
    /// tokens are not mistaken for adjacent ones.
    Other,
}

/// A token and the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    pub(crate) line: usize,
}

impl Token {
    /// The identifier, if this is one.
    pub(crate) fn ident(&self) -> Option<&str> {
        match &self.tok {
            Tok::Ident(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn is_punct(&self, c: char) -> bool {
        self.tok == Tok::Punct(c)
    }

    pub(crate) fn is_path_sep(&self) -> bool {
        self.tok == Tok::PathSep
    }
}

/// Splits `src` into tokens.
pub(crate) fn lex(src: &str) -> Vec<Token> {
    Lexer {
        chars: src.chars().collect(),
        i: 0,
        line: 1,
        out: Vec::new(),
    }
    .run()
}

struct Lexer {
    chars: Vec<char>,
    i: usize,
    line: usize,
    out: Vec<Token>,
}

impl Lexer {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.i + ahead).copied()
    }

    /// Moves past one character, counting lines.
    fn bump(&mut self) {
        if self.peek(0) == Some('\n') {
            self.line += 1;
        }
        self.i += 1;
    }

    fn push(&mut self, tok: Tok, line: usize) {
        self.out.push(Token { tok, line });
    }

    fn run(mut self) -> Vec<Token> {
        while let Some(c) = self.peek(0) {
            let line = self.line;
            match c {
                c if c.is_whitespace() => self.bump(),
                '/' if self.peek(1) == Some('/') => {
                    while self.peek(0).is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                '/' if self.peek(1) == Some('*') => self.block_comment(),
                '"' => {
                    let s = self.quoted();
                    self.push(Tok::Str(s), line);
                }
                '\'' => self.quote_mark(line),
                ':' if self.peek(1) == Some(':') => {
                    self.i += 2;
                    self.push(Tok::PathSep, line);
                }
                c if c.is_ascii_digit() => {
                    while self
                        .peek(0)
                        .is_some_and(|c| c.is_alphanumeric() || c == '_')
                    {
                        self.bump();
                    }
                    self.push(Tok::Other, line);
                }
                c if c.is_alphabetic() || c == '_' => self.word(line),
                c => {
                    self.bump();
                    self.push(Tok::Punct(c), line);
                }
            }
        }
        self.out
    }

    /// `/* ... */`, nested as Rust allows.
    fn block_comment(&mut self) {
        let mut depth = 0usize;
        while let Some(c) = self.peek(0) {
            if c == '/' && self.peek(1) == Some('*') {
                depth += 1;
                self.i += 2;
            } else if c == '*' && self.peek(1) == Some('/') {
                self.i += 2;
                depth -= 1;
                if depth == 0 {
                    return;
                }
            } else {
                self.bump();
            }
        }
    }

    /// A `"..."` literal starting at the opening quote; returns its contents.
    fn quoted(&mut self) -> String {
        self.bump();
        let mut s = String::new();
        while let Some(c) = self.peek(0) {
            self.bump();
            match c {
                '"' => break,
                '\\' => {
                    s.push(c);
                    if let Some(next) = self.peek(0) {
                        s.push(next);
                        self.bump();
                    }
                }
                c => s.push(c),
            }
        }
        s
    }

    /// A raw string starting at `#` or `"` after its `r`; returns its contents.
    fn raw_quoted(&mut self) -> String {
        let mut hashes = 0;
        while self.peek(0) == Some('#') {
            hashes += 1;
            self.bump();
        }
        // The opening quote.
        self.bump();
        let mut s = String::new();
        while let Some(c) = self.peek(0) {
            if c == '"' && (1..=hashes).all(|k| self.peek(k) == Some('#')) {
                for _ in 0..=hashes {
                    self.bump();
                }
                break;
            }
            s.push(c);
            self.bump();
        }
        s
    }

    /// A character literal (`'a'`, `'\n'`, `'\u{1F600}'`), or the quote of
    /// a lifetime or label (`'a`, `'static`), which is dropped.
    fn quote_mark(&mut self, line: usize) {
        if self.peek(1) == Some('\\') {
            self.bump();
            self.bump();
            // The escaped character, then up to the closing quote.
            self.bump();
            while self.peek(0).is_some_and(|c| c != '\'' && c != '\n') {
                self.bump();
            }
            self.bump();
            self.push(Tok::Other, line);
        } else if self.peek(2) == Some('\'') {
            self.i += 3;
            self.push(Tok::Other, line);
        } else {
            self.bump();
        }
    }

    /// An identifier, or a literal with a prefix (`r"…"`, `b"…"`, `br#"…"#`,
    /// `c"…"`, `b'x'`), or a raw identifier (`r#type`).
    fn word(&mut self, line: usize) {
        let start = self.i;
        while self
            .peek(0)
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            self.bump();
        }
        let word: String = self.chars[start..self.i].iter().collect();
        let next = self.peek(0);
        let raw_string_follows = next == Some('"')
            || (next == Some('#') && {
                let mut k = 0;
                while self.peek(k) == Some('#') {
                    k += 1;
                }
                self.peek(k) == Some('"')
            });
        match word.as_str() {
            "r" | "br" | "cr" if raw_string_follows => {
                let s = self.raw_quoted();
                self.push(Tok::Str(s), line);
            }
            "b" | "c" if next == Some('"') => {
                let s = self.quoted();
                self.push(Tok::Str(s), line);
            }
            "b" if next == Some('\'') => self.quote_mark(line),
            "r" if next == Some('#')
                && self.peek(1).is_some_and(|c| c.is_alphabetic() || c == '_') =>
            {
                self.bump();
                let start = self.i;
                while self
                    .peek(0)
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
                {
                    self.bump();
                }
                let ident: String = self.chars[start..self.i].iter().collect();
                self.push(Tok::Ident(ident), line);
            }
            _ => self.push(Tok::Ident(word), line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idents(src: &str) -> Vec<String> {
        lex(src)
            .into_iter()
            .filter_map(|t| t.ident().map(str::to_owned))
            .collect()
    }

    #[test]
    fn comments_strings_and_chars_are_not_code() {
        let src = r####"
            // use crate::in_comment;
            /* use crate::in_block; /* nested */ still comment */
            let s = "use crate::in_string; \" still string";
            let r = r#"use crate::in_raw; "quoted" "#;
            let c = '"'; let e = '\''; let l: &'static str = b"x";
            fn f<'a>(x: &'a str) {}
        "####;
        let ids = idents(src);
        for word in [
            "in_comment",
            "in_block",
            "in_string",
            "in_raw",
            "crate",
            "use",
        ] {
            assert!(!ids.contains(&word.to_owned()), "{word} in {ids:?}");
        }
        assert!(ids.contains(&"static".to_owned()));
        assert!(ids.contains(&"f".to_owned()));
    }

    #[test]
    fn lines_and_path_separators() {
        let toks = lex("use\ncrate::x;\n/* a\nb */ r#type");
        assert_eq!(toks[0].line, 1);
        assert_eq!(toks[1].tok, Tok::Ident("crate".into()));
        assert_eq!(toks[1].line, 2);
        assert!(toks[2].is_path_sep());
        assert!(toks[4].is_punct(';'));
        assert_eq!(toks[5].tok, Tok::Ident("type".into()));
        assert_eq!(toks[5].line, 4);
    }

    #[test]
    fn unit_tests_begin_at_the_first_unindented_cfg_test() {
        let src = "//! x\nfn a() {}\n    #[cfg(test)]\n    fn b() {}\n#[cfg(test)]\nmod tests {}\n";
        assert_eq!(test_start(src), Some(4));
        let whole = "//! Tests of x.\n\n#![cfg(test)]\n\nfn t() {}\n";
        assert_eq!(test_start(whole), Some(2), "a test-only file");
        assert_eq!(
            before_tests(src),
            "//! x\nfn a() {}\n    #[cfg(test)]\n    fn b() {}\n"
        );
        assert_eq!(before_tests("fn a() {}"), "fn a() {}");
    }
}
