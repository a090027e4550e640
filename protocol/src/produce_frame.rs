//! A Produce request written as parts, for a proxy forwarding a client's
//! batches: the header and the fields around each partition's records are
//! encoded into small buffers, and each record set goes out as the `Bytes`
//! it arrived in (no copy of the records into a new request). The parts,
//! written in order, are byte for byte what Kafka's encoder writes.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};

/// A request frame without its length prefix, in parts; bytes 4..8 of the
/// first part are the correlation id.
#[derive(Clone, Debug, Default)]
pub struct FrameParts {
    pub parts: Vec<Bytes>,
}

impl FrameParts {
    /// A frame of one part.
    pub fn one(frame: Bytes) -> Self {
        Self { parts: vec![frame] }
    }

    /// The frame's length (what its length prefix says).
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole frame in one buffer (tests, and callers that need it).
    pub fn join(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.len());
        for p in &self.parts {
            b.extend_from_slice(p);
        }
        b.freeze()
    }
}

fn uvarint(b: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        b.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

fn string(b: &mut BytesMut, s: Option<&str>, flexible: bool) {
    match (s, flexible) {
        (None, false) => b.put_i16(-1),
        (None, true) => uvarint(b, 0),
        (Some(s), false) => {
            b.put_i16(s.len() as i16);
            b.put_slice(s.as_bytes());
        }
        (Some(s), true) => {
            uvarint(b, s.len() as u32 + 1);
            b.put_slice(s.as_bytes());
        }
    }
}

fn array_len(b: &mut BytesMut, n: usize, flexible: bool) {
    if flexible {
        uvarint(b, n as u32 + 1);
    } else {
        b.put_i32(n as i32);
    }
}

/// `req` at `version` with `client_id` and the header's tagged fields
/// `header_tags` (e.g. a trace context), in parts. Versions 3 to 12 (those
/// that name topics); a request carrying tagged fields Floe does not know
/// is encoded whole by the codec instead.
pub fn produce_parts(
    version: i16,
    client_id: &str,
    header_tags: std::collections::BTreeMap<i32, bytes::Bytes>,
    req: &ProduceRequest,
) -> Result<FrameParts, String> {
    let unknown = !req.unknown_tagged_fields.is_empty()
        || req.topic_data.iter().any(|t| {
            !t.unknown_tagged_fields.is_empty()
                || t.partition_data
                    .iter()
                    .any(|p| !p.unknown_tagged_fields.is_empty())
        });
    let mut b = BytesMut::with_capacity(256);
    RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(version)
        .with_correlation_id(0)
        .with_client_id(Some(StrBytes::from_string(client_id.to_string())))
        .with_unknown_tagged_fields(header_tags)
        .encode(&mut b, ApiKey::Produce.request_header_version(version))
        .map_err(|e| e.to_string())?;
    if !(3..=12).contains(&version) || unknown {
        req.encode(&mut b, version).map_err(|e| e.to_string())?;
        return Ok(FrameParts::one(b.freeze()));
    }
    let flexible = version >= 9;
    let mut parts = Vec::with_capacity(
        2 * req
            .topic_data
            .iter()
            .map(|t| t.partition_data.len())
            .sum::<usize>()
            + 1,
    );
    string(
        &mut b,
        req.transactional_id.as_ref().map(|s| s.0.as_str()),
        flexible,
    );
    b.put_i16(req.acks);
    b.put_i32(req.timeout_ms);
    array_len(&mut b, req.topic_data.len(), flexible);
    for t in &req.topic_data {
        string(&mut b, Some(t.name.0.as_str()), flexible);
        array_len(&mut b, t.partition_data.len(), flexible);
        for p in &t.partition_data {
            b.put_i32(p.index);
            match (&p.records, flexible) {
                (None, false) => b.put_i32(-1),
                (None, true) => uvarint(&mut b, 0),
                (Some(r), false) => b.put_i32(r.len() as i32),
                (Some(r), true) => uvarint(&mut b, r.len() as u32 + 1),
            }
            if let Some(r) = &p.records {
                if !r.is_empty() {
                    parts.push(b.split().freeze());
                    parts.push(r.clone());
                }
            }
            if flexible {
                uvarint(&mut b, 0);
            }
        }
        if flexible {
            uvarint(&mut b, 0);
        }
    }
    if flexible {
        uvarint(&mut b, 0);
    }
    parts.push(b.freeze());
    Ok(FrameParts { parts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{TopicName, TransactionalId};

    fn request(records: &[Option<Vec<u8>>], txn: Option<&str>) -> ProduceRequest {
        ProduceRequest::default()
            .with_transactional_id(txn.map(|t| TransactionalId(StrBytes::from_string(t.into()))))
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("orders")))
                    .with_partition_data(
                        records
                            .iter()
                            .enumerate()
                            .map(|(i, r)| {
                                PartitionProduceData::default()
                                    .with_index(i as i32)
                                    .with_records(r.clone().map(Bytes::from))
                            })
                            .collect(),
                    ),
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("x")))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(7)
                        .with_records(Some(Bytes::from(vec![9u8; 300])))]),
            ])
    }

    fn whole(version: i16, req: &ProduceRequest) -> Bytes {
        let mut b = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(version)
            .with_correlation_id(0)
            .with_client_id(Some(StrBytes::from_static_str("client-1")))
            .encode(&mut b, ApiKey::Produce.request_header_version(version))
            .unwrap();
        req.encode(&mut b, version).unwrap();
        b.freeze()
    }

    #[test]
    fn the_parts_are_what_the_codec_writes_in_every_version() {
        let big = vec![1u8; 70_000];
        let cases = [
            request(
                &[Some(vec![1, 2, 3]), None, Some(Vec::new()), Some(big)],
                None,
            ),
            request(&[Some(vec![5; 200])], Some("txn-a")),
            request(&[], None),
        ];
        for version in 3..=12 {
            for req in &cases {
                let parts = produce_parts(version, "client-1", Default::default(), req).unwrap();
                assert_eq!(parts.join(), whole(version, req), "v{version}");
                assert_eq!(parts.len(), whole(version, req).len());
            }
        }
    }

    #[test]
    fn records_are_carried_not_copied() {
        let req = request(&[Some(vec![4; 1000])], None);
        let parts = produce_parts(9, "client-1", Default::default(), &req).unwrap();
        let sent = req.topic_data[0].partition_data[0]
            .records
            .as_ref()
            .unwrap();
        assert!(
            parts
                .parts
                .iter()
                .any(|p| p.as_ptr() == sent.as_ptr() && p.len() == sent.len()),
            "the client's record bytes are one of the parts"
        );
    }

    #[test]
    fn unknown_tagged_fields_fall_back_to_the_codec() {
        let mut req = request(&[Some(vec![1])], None);
        req.unknown_tagged_fields
            .insert(5, Bytes::from_static(b"zz"));
        let parts = produce_parts(9, "client-1", Default::default(), &req).unwrap();
        assert_eq!(parts.parts.len(), 1);
        assert_eq!(parts.join(), whole(9, &req));
    }
}
