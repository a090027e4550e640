//! A producer that packs every partition's waiting records into one
//! Produce request per linger, as Kafka's Java producer does with the
//! partitions a broker leads. librdkafka sends one partition per request
//! (confluentinc/librdkafka#1700), so at hundreds of partitions its own
//! queueing dominates the latency it reports; this client measures what a
//! packing client sees. It speaks the protocol directly on one connection
//! to one broker (every partition's leader: the single-broker benchmarks),
//! pipelines up to `max_in_flight` requests and counts any partition error
//! as a failed record.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};

/// Produce v8: the last version before flexible encoding, which every
/// broker since Kafka 2.4 accepts.
const VERSION: i16 = 8;

pub struct Options {
    pub bootstrap: String,
    pub topic: String,
    pub partitions: i32,
    pub records: u64,
    pub record_size: usize,
    pub rate: u64,
    pub linger_ms: u64,
    pub max_in_flight: usize,
    pub warmup_ms: u64,
}

pub struct Report {
    pub acked: u64,
    pub failed: u64,
    pub requests: u64,
    pub secs: f64,
    /// Per record, from the moment it was due (the rate's schedule) to its
    /// acknowledgement, in µs: the client's linger and queueing included.
    pub latency: Histogram<u64>,
    pub first_error: Option<String>,
}

/// A request on the wire: its correlation id and, per partition, the
/// records it carries (their indexes in the schedule).
struct InFlight {
    correlation: i32,
    records: BTreeMap<i32, Vec<u64>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

pub fn run(o: Options) -> Result<Report> {
    if o.partitions < 1 || o.rate == 0 {
        bail!("packed produce needs --partitions >= 1 and --rate > 0");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(produce(o))
}

async fn produce(o: Options) -> Result<Report> {
    let stream = tokio::net::TcpStream::connect(&o.bootstrap)
        .await
        .with_context(|| format!("connecting to {}", o.bootstrap))?;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let start = Instant::now();
    let measure_from = start + Duration::from_millis(o.warmup_ms);
    let due = move |i: u64| start + Duration::from_secs_f64(i as f64 / o.rate as f64);

    let (tx, mut rx) = mpsc::unbounded_channel::<InFlight>();
    let report = Arc::new(Mutex::new(Report {
        acked: 0,
        failed: 0,
        requests: 0,
        secs: 0.0,
        latency: Histogram::new_with_bounds(1, 600_000_000, 3)?,
        first_error: None,
    }));

    // Responses come back in request order on one connection.
    let reader = tokio::spawn({
        let report = report.clone();
        async move {
            while let Some(req) = rx.recv().await {
                let mut len = [0u8; 4];
                rd.read_exact(&mut len).await?;
                let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
                rd.read_exact(&mut body).await?;
                let now = Instant::now();
                let mut body = Bytes::from(body);
                let h = ResponseHeader::decode(
                    &mut body,
                    ApiKey::Produce.response_header_version(VERSION),
                )?;
                if h.correlation_id != req.correlation {
                    bail!(
                        "response {} to request {}",
                        h.correlation_id,
                        req.correlation
                    );
                }
                let resp = ProduceResponse::decode(&mut body, VERSION)?;
                let mut errors: BTreeMap<i32, i16> = BTreeMap::new();
                for t in &resp.responses {
                    for p in &t.partition_responses {
                        if p.error_code != 0 {
                            errors.insert(p.index, p.error_code);
                        }
                    }
                }
                let mut r = report.lock().unwrap();
                r.requests += 1;
                for (p, indexes) in &req.records {
                    if let Some(code) = errors.get(p) {
                        r.failed += indexes.len() as u64;
                        r.first_error
                            .get_or_insert_with(|| format!("partition {p}: error code {code}"));
                        continue;
                    }
                    if !resp
                        .responses
                        .iter()
                        .flat_map(|t| &t.partition_responses)
                        .any(|x| x.index == *p)
                    {
                        r.failed += indexes.len() as u64;
                        r.first_error
                            .get_or_insert_with(|| format!("partition {p}: no answer"));
                        continue;
                    }
                    r.acked += indexes.len() as u64;
                    for &i in indexes {
                        let d = due(i);
                        if d >= measure_from {
                            r.latency.saturating_record(
                                now.saturating_duration_since(d).as_micros() as u64,
                            );
                        }
                    }
                }
            }
            Ok::<(), anyhow::Error>(())
        }
    });

    let slots = Arc::new(Semaphore::new(o.max_in_flight.max(1)));
    let payload = Bytes::from(vec![b'x'; o.record_size]);
    let topic = TopicName(StrBytes::from_string(o.topic.clone()));
    let linger = Duration::from_millis(o.linger_ms.max(1));
    let mut waiting: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    let mut next = 0u64;
    let mut correlation = 0i32;
    let mut tick = tokio::time::interval(linger);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while next < o.records || !waiting.is_empty() {
        tick.tick().await;
        // Every record due by now joins its partition's batch (in turn
        // over the partitions, as keys spread them).
        while next < o.records && due(next) <= Instant::now() {
            waiting
                .entry((next % o.partitions as u64) as i32)
                .or_default()
                .push(next);
            next += 1;
        }
        if waiting.is_empty() {
            continue;
        }
        // A free slot, or the records wait for the next linger (a request
        // is sent only with a slot, as the Java producer's in-flight cap).
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let records = std::mem::take(&mut waiting);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        let mut partition_data = Vec::with_capacity(records.len());
        for (p, indexes) in &records {
            let batch: Vec<Record> = indexes
                .iter()
                .enumerate()
                .map(|(n, _)| Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: -1,
                    producer_id: -1,
                    producer_epoch: -1,
                    timestamp_type: TimestampType::Creation,
                    offset: n as i64,
                    sequence: -1,
                    timestamp: now_ms,
                    key: None,
                    value: Some(payload.clone()),
                    headers: Default::default(),
                })
                .collect();
            let mut buf = BytesMut::new();
            RecordBatchEncoder::encode(
                &mut buf,
                &batch,
                &RecordEncodeOptions {
                    version: 2,
                    compression: Compression::None,
                },
            )?;
            partition_data.push(
                PartitionProduceData::default()
                    .with_index(*p)
                    .with_records(Some(buf.freeze())),
            );
        }
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic.clone())
                .with_partition_data(partition_data)]);
        correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(VERSION)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_static_str("floe-bench-packed")));
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        header.encode(&mut frame, ApiKey::Produce.request_header_version(VERSION))?;
        req.encode(&mut frame, VERSION)?;
        let len = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        // Registered before the bytes leave, so the reader always knows
        // the request its next response answers.
        tx.send(InFlight {
            correlation,
            records,
            _permit: permit,
        })
        .map_err(|_| anyhow::anyhow!("the response reader stopped"))?;
        wr.write_all(&frame).await?;
        if reader.is_finished() {
            break;
        }
    }
    drop(tx);
    reader.await??;
    let mut r = std::mem::replace(
        &mut *report.lock().unwrap(),
        Report {
            acked: 0,
            failed: 0,
            requests: 0,
            secs: 0.0,
            latency: Histogram::new(3)?,
            first_error: None,
        },
    );
    r.secs = start.elapsed().as_secs_f64();
    Ok(r)
}
