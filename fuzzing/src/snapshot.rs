//! Targets `snapshot_file` (a file `vanectl push` reads) and
//! `snapshot_proto` (a `vane.v1.Snapshot` on the wire).

use prost::Message;
use vane_model::{DEFAULT_MAX_SNAPSHOT_BYTES, Format, Snapshot, parse_file, validate};
use vane_proto as pb;

use crate::invariants::{check_pushed, check_snapshot};

/// A snapshot file, read as YAML and as JSON: parsing and validation never
/// panic; a valid snapshot keeps every [`check_snapshot`] property; and the
/// push path (`vanectl push` converts the parsed file with
/// `spec_to_proto`, the server runs `admin::prepare`) accepts every file
/// that validates, with the same hash.
pub fn snapshot_file(data: &[u8]) {
    for format in [Format::Yaml, Format::Json] {
        file_as(data, format);
    }
}

fn file_as(data: &[u8], format: Format) {
    let spec = match parse_file(data, format) {
        Ok(spec) => spec,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "a parse error without a message");
            return;
        }
    };
    let validated = validate(spec.clone());
    if let Ok(s) = &validated {
        check_snapshot(s);
    }
    let wire = vane_model::proto::spec_to_proto(&spec);
    let pushed = vane_control::admin::prepare(wire, DEFAULT_MAX_SNAPSHOT_BYTES);
    match (validated, pushed) {
        (Ok(s), Ok((encoded, hash))) => {
            assert_eq!(
                hash,
                s.content_hash().to_hex(),
                "the server hashes a pushed file differently from the file itself"
            );
            check_pushed(&encoded, &hash);
        }
        // YAML aliases can make a small file large once expanded.
        (Ok(_), Err(status)) => assert!(
            status.message().contains("exceeds the limit"),
            "the server refuses a file that validates: {}",
            status.message()
        ),
        // The wire has no "absent" for strings: a field given as "" in the
        // file (refused there) arrives as absent (its default). Whatever
        // the server accepts must still be consistent.
        (Err(_), Ok((encoded, hash))) => check_pushed(&encoded, &hash),
        (Err(_), Err(_)) => {}
    }
}

/// An encoded `vane.v1.Snapshot` (what `Push` carries, `Get` returns, the
/// store keeps and agents decode): conversion never panics, a valid one
/// keeps every [`check_snapshot`] property, and the server's `prepare`
/// agrees with `Snapshot::try_from`.
pub fn snapshot_proto(data: &[u8]) {
    let msg = match pb::Snapshot::decode(data) {
        Ok(msg) => msg,
        Err(_) => {
            assert!(
                Snapshot::decode(data).is_err(),
                "Snapshot::decode accepts bytes prost refuses"
            );
            return;
        }
    };
    let converted = Snapshot::try_from(msg.clone());
    assert_eq!(
        converted.is_ok(),
        Snapshot::decode(data).is_ok(),
        "Snapshot::decode and TryFrom disagree"
    );
    if let Ok(s) = &converted {
        check_snapshot(s);
    }
    match (
        converted,
        vane_control::admin::prepare(msg, DEFAULT_MAX_SNAPSHOT_BYTES),
    ) {
        (Ok(s), Ok((encoded, hash))) => {
            assert_eq!(
                hash,
                s.content_hash().to_hex(),
                "prepare hashes differently"
            );
            check_pushed(&encoded, &hash);
        }
        (Ok(_), Err(status)) => assert!(
            status.message().contains("exceeds the limit"),
            "prepare refuses a valid snapshot: {}",
            status.message()
        ),
        (Err(e), Ok(_)) => panic!("prepare accepts a snapshot TryFrom refuses: {e}"),
        (Err(_), Err(_)) => {}
    }
}
