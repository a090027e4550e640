//! Kafka's rules that both the broker and the proxy apply: which topic
//! names are valid, where a group's offsets live (the offsets topic and the
//! partition a group hashes to), and the ApiVersions answer.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::ApiVersionsResponse;

use crate::{versions, ResponseError};

pub use floe_common::topic::{valid_topic_name, OFFSETS_TOPIC, TXN_TOPIC};

/// The partition of the offsets topic that holds `group`: Kafka's choice
/// (Utils.abs of the Java String hash of the id, modulo the count).
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let mut h: i32 = 0;
    for unit in group.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(unit as i32);
    }
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions.max(1)
}

/// The ApiVersions answer: every implemented API with its version range
/// (with UNSUPPORTED_VERSION when the request's own version is not).
pub fn api_versions(version: i16, unsupported: bool) -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    if unsupported {
        r.error_code = ResponseError::UnsupportedVersion.code();
    }
    for &(api, _, _) in versions::IMPLEMENTED {
        if let Some((lo, hi)) = versions::supported(api) {
            r.api_keys.push(
                ApiVersion::default()
                    .with_api_key(api as i16)
                    .with_min_version(lo)
                    .with_max_version(hi),
            );
        }
    }
    let _ = version;
    r
}
