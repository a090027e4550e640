//! A Kafka client for simulated hosts: requests framed and encoded with the
//! codec, over turmoil's TCP; an idempotent, acks=all producer that
//! retries a batch with the same sequence until it is acked (as librdkafka
//! does with one request in flight), and a reader for the checker.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchResponse, InitProducerIdRequest, InitProducerIdResponse,
    MetadataRequest, MetadataResponse, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turmoil::net::TcpStream;

/// How long one request may take before the client gives up on its
/// connection (a partitioned or crashed broker never answers).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection to a broker.
pub struct Conn {
    stream: TcpStream,
    correlation: i32,
}

impl Conn {
    pub async fn connect(addr: &str) -> Result<Self, String> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        Ok(Self {
            stream,
            correlation: 0,
        })
    }

    /// Send `body` as `api` at `version` and read its answer.
    pub async fn call<Q: Encodable, R: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &Q,
    ) -> Result<R, String> {
        self.correlation += 1;
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("sim")))
            .encode(&mut buf, api.request_header_version(version))
            .map_err(|e| e.to_string())?;
        body.encode(&mut buf, version).map_err(|e| e.to_string())?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        let exchange = async {
            self.stream
                .write_all(&buf)
                .await
                .map_err(|e| format!("write: {e}"))?;
            let mut len = [0u8; 4];
            self.stream
                .read_exact(&mut len)
                .await
                .map_err(|e| format!("read: {e}"))?;
            let mut frame = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
            self.stream
                .read_exact(&mut frame)
                .await
                .map_err(|e| format!("read: {e}"))?;
            Ok::<_, String>(Bytes::from(frame))
        };
        let mut frame = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{api:?} timed out"))??;
        let h = ResponseHeader::decode(&mut frame, api.response_header_version(version))
            .map_err(|e| e.to_string())?;
        if h.correlation_id != self.correlation {
            return Err(format!(
                "correlation id {} where {} was expected",
                h.correlation_id, self.correlation
            ));
        }
        R::decode(&mut frame, version).map_err(|e| e.to_string())
    }
}

/// The cluster as a Metadata answer shows it: broker addresses and the
/// owner of each partition of `topic`.
pub struct Layout {
    pub brokers: BTreeMap<i32, String>,
    pub owners: BTreeMap<i32, i32>,
}

pub async fn layout(bootstrap: &[String], topic: &str) -> Result<Layout, String> {
    let mut last = String::from("no bootstrap broker");
    for addr in bootstrap {
        let mut c = match Conn::connect(addr).await {
            Ok(c) => c,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let req =
            MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(topic.to_string()))))]));
        let resp: MetadataResponse = match c.call(ApiKey::Metadata, 8, &req).await {
            Ok(r) => r,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let brokers = resp
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
            .collect();
        let mut owners = BTreeMap::new();
        for t in &resp.topics {
            for p in &t.partitions {
                if p.error_code == 0 && p.leader_id != BrokerId(-1) {
                    owners.insert(p.partition_index, p.leader_id.0);
                }
            }
        }
        return Ok(Layout { brokers, owners });
    }
    Err(last)
}

/// A batch the producer sent: its partition, first sequence and values.
#[derive(Clone, Debug)]
pub struct Sent {
    pub partition: i32,
    pub sequence: i32,
    pub values: Vec<Bytes>,
}

/// An idempotent producer's batch as bytes.
pub fn batch(producer_id: i64, epoch: i16, s: &Sent, now_ms: i64) -> Bytes {
    let records: Vec<Record> = s
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: s.sequence + i as i32,
            timestamp: now_ms,
            key: None,
            value: Some(v.clone()),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("a batch encodes");
    buf.freeze()
}

/// A producer id from any broker.
pub async fn init_producer_id(bootstrap: &[String]) -> Result<(i64, i16), String> {
    let mut last = String::new();
    for addr in bootstrap {
        let Ok(mut c) = Conn::connect(addr).await else {
            continue;
        };
        let req = InitProducerIdRequest::default().with_transaction_timeout_ms(60_000);
        match c
            .call::<_, InitProducerIdResponse>(ApiKey::InitProducerId, 1, &req)
            .await
        {
            Ok(r) if r.error_code == 0 => return Ok((r.producer_id.0, r.producer_epoch)),
            Ok(r) => last = format!("InitProducerId error {}", r.error_code),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Produce one batch to its partition's owner: the base offset it was
/// acked at, or why not (the caller retries the same batch).
pub async fn produce(
    conn: &mut Conn,
    topic: &str,
    partition: i32,
    records: Bytes,
) -> Result<i64, String> {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])]);
    let resp: ProduceResponse = conn.call(ApiKey::Produce, 8, &req).await?;
    let p = resp
        .responses
        .first()
        .and_then(|t| t.partition_responses.first())
        .ok_or("an empty produce answer")?;
    if p.error_code != 0 {
        return Err(format!("produce error {}", p.error_code));
    }
    Ok(p.base_offset)
}

/// One Fetch of `partition` from `offset`, as a consumer makes it: the
/// records from `offset` below the high watermark, as (offset, value), and
/// the high watermark.
pub async fn fetch(
    conn: &mut Conn,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<(Vec<(i64, Bytes)>, i64), String> {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(4 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    let resp: FetchResponse = conn.call(ApiKey::Fetch, 11, &req).await?;
    let p = resp
        .responses
        .first()
        .and_then(|t| t.partitions.first())
        .ok_or("an empty fetch answer")?;
    if p.error_code != 0 {
        return Err(format!("fetch error {}", p.error_code));
    }
    let hw = p.high_watermark;
    let records = p.records.clone().unwrap_or_default();
    let mut out = Vec::new();
    for set in floe_protocol::records::decode_all(&records).map_err(|e| e.to_string())? {
        for r in set.records {
            if r.offset >= offset && r.offset < hw {
                out.push((r.offset, r.value.unwrap_or_default()));
            }
        }
    }
    Ok((out, hw))
}

/// Every record of `partition` from offset 0 up to its high watermark,
/// as (offset, value).
pub async fn read_all(
    conn: &mut Conn,
    topic: &str,
    partition: i32,
) -> Result<Vec<(i64, Bytes)>, String> {
    let mut out = Vec::new();
    let mut next = 0i64;
    loop {
        let (records, hw) = fetch(conn, topic, partition, next).await?;
        if hw < 0 {
            // Not known yet (a proxy whose follower of the partition has
            // no snapshot from the owner yet answers -1): ask again.
            return Err(format!(
                "partition {partition}: high watermark not known yet"
            ));
        }
        if next >= hw {
            return Ok(out);
        }
        let Some(&(last, _)) = records.last() else {
            // Nothing below the high watermark: the read is stuck.
            return Err(format!(
                "partition {partition}: no record at {next} below the high watermark {hw}"
            ));
        };
        out.extend(records);
        next = last + 1;
    }
}
