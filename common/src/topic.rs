//! Kafka's rules for topic names, and the internal topics Floe keeps.

/// The internal topic holding committed offsets and consumer groups.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The internal topic holding transaction coordinators' state.
pub const TXN_TOPIC: &str = "__transaction_state";

/// Topics Floe itself relies on: never deleted by an operator's request.
pub const INTERNAL_TOPICS: &[&str] = &[OFFSETS_TOPIC, TXN_TOPIC];

/// Whether `name` is one of Floe's internal topics.
pub fn is_internal(name: &str) -> bool {
    INTERNAL_TOPICS.contains(&name)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_kafka_accepts_and_refuses() {
        for ok in ["a", "orders.v1", "A_b-C.9", &"x".repeat(249)] {
            assert!(valid_topic_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "é", "a/b", &"x".repeat(250)] {
            assert!(valid_topic_name(bad).is_err(), "{bad}");
        }
        assert!(is_internal("__consumer_offsets"));
        assert!(is_internal("__transaction_state"));
        assert!(!is_internal("orders"));
    }
}
