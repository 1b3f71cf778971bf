//! What must hold of every snapshot that passed validation, wherever it came
//! from, and of every encoding the control server accepts. Each check panics
//! naming the property it found broken.

use vane_model::{ContentHash, Format, HeaderMatchKind, PathMatch, Snapshot, parse_file, validate};

/// Every property of a valid snapshot:
/// - its wire encoding decodes to the same content and hash, and encoding
///   that again gives the same bytes (the store keeps, and agents hash, one
///   canonical form);
/// - what `vanectl get` prints (canonical YAML), its JSON form and the
///   canonical JSON the hash covers all parse and validate back to the same
///   hash (`vanectl get | vanectl push` is a no-op);
/// - the canonical spec validates to the same hash;
/// - every regular expression is one whole expression, so the anchors the
///   matcher adds cover all of it.
pub fn check_snapshot(s: &Snapshot) {
    let hash = s.content_hash();
    let encoded = s.encode();
    let back = match Snapshot::decode(&encoded) {
        Ok(back) => back,
        Err(e) => panic!("the encoding of a valid snapshot does not decode: {e}"),
    };
    assert_eq!(
        back.content_hash(),
        hash,
        "the hash changed across encode/decode"
    );
    assert_eq!(&back, s, "the content changed across encode/decode");
    assert!(
        back.encode() == encoded,
        "the canonical encoding is not a fixed point of decode/encode"
    );

    reparse("canonical YAML", s.to_yaml().as_bytes(), Format::Yaml, hash);
    let json = match serde_json::to_vec(&s.to_json()) {
        Ok(json) => json,
        Err(e) => panic!("the JSON form does not serialize: {e}"),
    };
    reparse("the JSON form", &json, Format::Json, hash);
    reparse(
        "the canonical JSON",
        &s.canonical_bytes(),
        Format::Json,
        hash,
    );
    match validate(s.canonical_spec()) {
        Ok(c) => assert_eq!(
            c.content_hash(),
            hash,
            "the canonical spec hashes differently"
        ),
        Err(e) => panic!("the canonical spec does not validate: {e}"),
    }
    check_patterns(s);
}

/// `text` (a rendering of a snapshot hashing to `hash`) parses as `format`,
/// validates, and hashes to `hash`.
fn reparse(what: &str, text: &[u8], format: Format, hash: ContentHash) {
    let shown = || String::from_utf8_lossy(text).into_owned();
    let spec = match parse_file(text, format) {
        Ok(spec) => spec,
        Err(e) => panic!("{what} does not parse: {e}\n{}", shown()),
    };
    match validate(spec) {
        Ok(again) => assert_eq!(
            again.content_hash(),
            hash,
            "{what} hashes differently once parsed back:\n{}",
            shown()
        ),
        Err(e) => panic!("{what} does not validate: {e}\n{}", shown()),
    }
}

/// Every regex compiles on its own: one that compiles only inside the
/// matcher's `^(?:…)$` (e.g. `a)|(b`) escapes the anchors.
fn check_patterns(s: &Snapshot) {
    let sources = s.route_tables.iter().flat_map(|t| &t.routes).flat_map(|r| {
        let path = match &r.matcher.path {
            PathMatch::Regex(p) => Some(p.source()),
            _ => None,
        };
        let headers = r.matcher.headers.iter().filter_map(|h| match &h.kind {
            HeaderMatchKind::Regex(p) => Some(p.source()),
            _ => None,
        });
        path.into_iter().chain(headers)
    });
    for source in sources {
        if let Err(e) = regex::Regex::new(source) {
            panic!(
                "regex {source:?} was accepted, but is not one expression on its own, \
                 so the anchors do not cover all of it: {e}"
            );
        }
    }
}

/// What the control server returned for an accepted push: `encoded` is
/// canonical (decodes, validates, hashes to `hash`, re-encodes to itself).
pub fn check_pushed(encoded: &[u8], hash: &str) {
    let s = match Snapshot::decode(encoded) {
        Ok(s) => s,
        Err(e) => panic!("the server stored bytes that do not decode: {e}"),
    };
    assert_eq!(
        s.content_hash().to_hex(),
        hash,
        "the server's hash is not the hash of what it stored"
    );
    assert!(
        s.encode() == encoded,
        "the server stored a non-canonical encoding"
    );
}
