//! flagd's sync messages keep the field numbers and types the pinned
//! OpenFeature flagd providers decode (see proto/flagd/sync/v1/sync.proto).

use prost::Message;
use vane_proto::flagd::sync::v1::{
    FetchAllFlagsResponse, GetMetadataResponse, SyncFlagsRequest, SyncFlagsResponse,
};
use vane_proto::prost_types;

#[test]
fn sync_flags_response_carries_the_configuration_in_field_1_and_the_context_in_field_2() {
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        "env".to_owned(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("prod".to_owned())),
        },
    );
    let msg = SyncFlagsResponse {
        flag_configuration: "{}".to_owned(),
        sync_context: Some(prost_types::Struct { fields }),
    };
    let bytes = msg.encode_to_vec();
    // Field 1, length-delimited (0x0a), "{}"; then field 2, length-delimited (0x12).
    assert_eq!(&bytes[..4], &[0x0a, 2, b'{', b'}']);
    assert_eq!(bytes[4], 0x12);
    assert_eq!(SyncFlagsResponse::decode(bytes.as_slice()).unwrap(), msg);
}

#[test]
fn requests_carry_provider_id_in_field_1_and_selector_in_field_2() {
    #[allow(deprecated)]
    let msg = SyncFlagsRequest {
        provider_id: "p".to_owned(),
        selector: "g".to_owned(),
    };
    assert_eq!(msg.encode_to_vec(), [0x0a, 1, b'p', 0x12, 1, b'g']);
}

#[test]
fn fetch_all_and_metadata_responses_use_flagds_field_numbers() {
    let fetch = FetchAllFlagsResponse {
        flag_configuration: "x".to_owned(),
    };
    assert_eq!(fetch.encode_to_vec(), [0x0a, 1, b'x']);
    #[allow(deprecated)]
    let meta = GetMetadataResponse {
        metadata: Some(prost_types::Struct::default()),
    };
    // Field 2 (field 1 is reserved), an empty Struct.
    assert_eq!(meta.encode_to_vec(), [0x12, 0]);
}
