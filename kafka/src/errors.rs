//! Domain errors of the crates below the Kafka edge, mapped once to the
//! Kafka error code a client acts on.

use floe_meta::topics::TopicError;
use floe_meta::MetaError;
use floe_protocol::ResponseError;

/// The Kafka error for a failed topic admin operation.
pub fn topic_error(e: &TopicError) -> ResponseError {
    match e {
        TopicError::InvalidName(_) => ResponseError::InvalidTopicException,
        TopicError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        TopicError::InvalidConfig(_) => ResponseError::InvalidConfig,
        TopicError::InvalidRequest(_) => ResponseError::InvalidRequest,
        TopicError::AlreadyExists(_) => ResponseError::TopicAlreadyExists,
        TopicError::Unknown(_) => ResponseError::UnknownTopicOrPartition,
        TopicError::Concurrent(_) => ResponseError::ConcurrentTransactions,
        TopicError::Meta(m) => meta_error(m),
    }
}

/// The Kafka error for a metadata store failure: retriable where a retry
/// can succeed (the store was unreachable, or the outcome is unknown and a
/// retry re-reads it).
pub fn meta_error(e: &MetaError) -> ResponseError {
    match e {
        MetaError::Unavailable(_) | MetaError::Indeterminate(_) => ResponseError::RequestTimedOut,
        MetaError::LeaseNotFound(_)
        | MetaError::Compacted { .. }
        | MetaError::Invalid(_)
        | MetaError::Corrupt(_) => ResponseError::UnknownServerError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_error_has_its_kafka_code() {
        let cases = [
            (TopicError::InvalidName("x".into()), 17),
            (TopicError::InvalidPartitions("x".into()), 37),
            (TopicError::InvalidConfig("x".into()), 40),
            (TopicError::InvalidRequest("x".into()), 42),
            (TopicError::AlreadyExists("t".into()), 36),
            (TopicError::Unknown("t".into()), 3),
            (TopicError::Concurrent("t".into()), 51),
            (TopicError::Meta(MetaError::Unavailable("down".into())), 7),
            (TopicError::Meta(MetaError::Corrupt("bad".into())), -1),
        ];
        for (e, code) in cases {
            assert_eq!(topic_error(&e).code(), code, "{e:?}");
        }
    }
}
