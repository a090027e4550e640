//! The Kafka APIs Floe implements and the version range of each: what
//! ApiVersions advertises, intersected with what the codec supports.

use kafka_protocol::messages::ApiKey;

/// (api, lowest, highest) version implemented. Ranges cover librdkafka 2.x,
/// the Java client 3.x/4.x and kafka-python 2.x.
pub const IMPLEMENTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 10),
    (ApiKey::Fetch, 0, 16),
    (ApiKey::ListOffsets, 0, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 0, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 0, 9),
    (ApiKey::OffsetFetch, 0, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::DescribeTopicPartitions, 0, 0),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::AddPartitionsToTxn, 0, 5),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 5),
    (ApiKey::TxnOffsetCommit, 0, 4),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 2),
];

/// APIs brokers answer each other on their internal listener and never
/// advertise to clients (a proxy does not route them): transaction markers
/// from a coordinator to a partition's owner.
pub const INTERNAL: &[(ApiKey, i16, i16)] = &[(ApiKey::WriteTxnMarkers, 1, 1)];

/// The advertised range of `api`, if Floe implements it.
pub fn supported(api: ApiKey) -> Option<(i16, i16)> {
    IMPLEMENTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|&(_, lo, hi)| {
            let codec = api.valid_versions();
            let min = crate::legacy_api::oldest(api).map_or(codec.min, |o| o.min(codec.min));
            (lo.max(min), hi.min(codec.max))
        })
}

pub fn is_supported(api: ApiKey, version: i16) -> bool {
    supported(api).is_some_and(|(lo, hi)| (lo..=hi).contains(&version))
        || INTERNAL
            .iter()
            .any(|&(a, lo, hi)| a == api && (lo..=hi).contains(&version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_range_is_within_the_codec() {
        for &(api, lo, hi) in IMPLEMENTED {
            let codec = api.valid_versions();
            let min = crate::legacy_api::oldest(api).unwrap_or(codec.min);
            assert!(
                lo >= min && hi <= codec.max,
                "{api:?} {lo}..={hi} outside codec"
            );
            assert_eq!(supported(api), Some((lo, hi)));
        }
        assert!(is_supported(ApiKey::Fetch, 13));
        assert!(is_supported(ApiKey::Produce, 2), "a legacy version");
        assert!(!is_supported(ApiKey::JoinGroup, 10));
        assert!(
            is_supported(ApiKey::AddPartitionsToTxn, 4),
            "KIP-890 verification"
        );
        assert!(is_supported(ApiKey::WriteTxnMarkers, 1), "between brokers");
        assert_eq!(supported(ApiKey::WriteTxnMarkers), None, "never advertised");
        assert!(
            !is_supported(ApiKey::TxnOffsetCommit, 5),
            "transaction version 2's implicit add"
        );
    }

    /// docs/compatibility.md lists exactly what ApiVersions advertises.
    #[test]
    fn the_compatibility_table_matches_api_versions() {
        let doc = include_str!("../../docs/compatibility.md");
        let mut listed = std::collections::BTreeMap::new();
        for line in doc.lines() {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let [name, key, versions] = cells[..] else {
                continue;
            };
            let (Ok(key), Some((lo, hi))) = (key.parse::<i16>(), versions.split_once('-')) else {
                continue;
            };
            let api = ApiKey::try_from(key).unwrap_or_else(|_| panic!("{name}: no API key {key}"));
            assert_eq!(format!("{api:?}"), name, "key {key}");
            listed.insert(
                key,
                (lo.parse::<i16>().unwrap(), hi.parse::<i16>().unwrap()),
            );
        }
        let advertised: std::collections::BTreeMap<i16, (i16, i16)> = IMPLEMENTED
            .iter()
            .map(|&(api, _, _)| (api as i16, supported(api).unwrap()))
            .collect();
        assert_eq!(listed, advertised);
    }
}
