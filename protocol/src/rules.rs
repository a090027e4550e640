//! Kafka's rules that both the broker and the proxy apply: which topic
//! names are valid, where a group's offsets live (the offsets topic and the
//! partition a group hashes to), the ApiVersions answer, and the pre-v4
//! FindCoordinator shape.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsResponse, FindCoordinatorResponse};

use crate::{versions, ResponseError};

/// A topic name Kafka would accept: 1-249 of [a-zA-Z0-9._-], not "." or "..".
pub fn valid_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    if name.len() > 249 {
        return Err(format!(
            "topic name is {} characters, the limit is 249",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '_' || *c == '-'))
    {
        return Err(format!("topic name {name:?} contains {c:?}; only ASCII alphanumerics, '.', '_' and '-' are allowed"));
    }
    Ok(())
}

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

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

/// FindCoordinator before v4 answers one key in top-level fields.
pub fn single_coordinator(resp: &mut FindCoordinatorResponse) {
    let c = resp.coordinators.pop().unwrap_or_default();
    resp.error_code = c.error_code;
    resp.error_message = c.error_message;
    resp.node_id = c.node_id;
    resp.host = c.host;
    resp.port = c.port;
}
