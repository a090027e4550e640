//! `floe-bench`: produce and consume load in the spirit of Kafka's
//! kafka-producer-perf-test and kafka-consumer-perf-test, on librdkafka.
//! Reports throughput (records/s, MB/s) and latency percentiles. The
//! `packed-produce` load speaks the protocol itself (see `packed`).
// A load generator measuring real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

mod packed;

#[derive(Parser)]
#[command(
    name = "floe-bench",
    about = "Kafka produce/consume benchmark (librdkafka)"
)]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:9092", global = true)]
    bootstrap: String,
    #[arg(long, default_value = "bench", global = true)]
    topic: String,
    /// A librdkafka property for every client, as kcat's -X (repeatable),
    /// e.g. -X security.protocol=sasl_ssl -X ssl.ca.location=ca.pem.
    #[arg(short = 'X', long = "property", global = true, value_parser = property)]
    properties: Vec<(String, String)>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Produce records as fast as possible, or at --rate records/s.
    Produce {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long, default_value_t = 1024)]
        record_size: usize,
        #[arg(long, default_value = "all")]
        acks: String,
        /// librdkafka batch.size (bytes per partition batch).
        #[arg(long, default_value_t = 1 << 20)]
        batch_bytes: usize,
        #[arg(long, default_value_t = 5)]
        linger_ms: u64,
        /// Target records per second (0: unthrottled).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        #[arg(long, default_value = "none")]
        compression: String,
        /// Produce in transactions of this many records each (0: none),
        /// under the transactional id `floe-bench-<pid>`; reports the
        /// commit latency (commit_transaction once the transaction's
        /// records are acked: EndTxn, markers durable).
        #[arg(long, default_value_t = 0)]
        transaction_records: u64,
        /// Give records keys from this many (k0..k{N-1}, in turn; 0: no
        /// keys). Compacted topics need keys.
        #[arg(long, default_value_t = 0)]
        keys: u64,
        /// Leave records sent in the first this-many ms out of the latency
        /// figures (the producer's start-up).
        #[arg(long, default_value_t = 0)]
        warmup_ms: u64,
        /// Create the topic first with this many partitions (0: leave it
        /// to auto-creation). Give records keys (--keys) to spread them
        /// over the partitions.
        #[arg(long, default_value_t = 0)]
        create_partitions: i32,
    },
    /// Produce at --rate records/s (acks=all) spread in turn over
    /// --partitions partitions of an existing topic, packing every
    /// partition's waiting records into one Produce request per linger as
    /// Kafka's Java producer does (librdkafka sends one partition per
    /// request). Talks to the --bootstrap broker only: for single-broker
    /// benchmarks, where it leads every partition.
    PackedProduce {
        #[arg(long, default_value_t = 100_000)]
        records: u64,
        #[arg(long, default_value_t = 1024)]
        record_size: usize,
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        #[arg(long, default_value_t = 5)]
        linger_ms: u64,
        /// Requests on the wire at once; more records wait for a slot.
        #[arg(long, default_value_t = 100)]
        max_in_flight: usize,
        /// Leave records due in the first this-many ms out of the latency.
        #[arg(long, default_value_t = 0)]
        warmup_ms: u64,
    },
    /// Consume --records records from the beginning of every partition.
    Consume {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
    },
    /// Connection set-up: --connections clients one after another, each
    /// connecting (with whatever TLS and SASL -X asks for) and fetching the
    /// topic's metadata, then closing. Reports the time to the first
    /// answer per connection.
    Connect {
        #[arg(long, default_value_t = 200)]
        connections: u64,
    },
    /// End-to-end latency: produce at --rate, consume concurrently, measure
    /// the time from send to receive.
    EndToEnd {
        #[arg(long, default_value_t = 20_000)]
        records: u64,
        #[arg(long, default_value_t = 1024)]
        record_size: usize,
        #[arg(long, default_value_t = 2000)]
        rate: u64,
    },
    /// An OpenTelemetry collector for trace benchmarks: serves OTLP/gRPC's
    /// trace service on --listen, counts the spans it is sent and writes
    /// the count to --count-file after every export (the tracing
    /// benchmark reads it to show what a run exported).
    OtlpSink {
        #[arg(long, default_value = "127.0.0.1:4317")]
        listen: String,
        #[arg(long)]
        count_file: String,
    },
}

struct Ctx {
    latency: Mutex<Histogram<u64>>,
    acked: AtomicU64,
    failed: AtomicU64,
    /// Records sent before this are acked but not put in the latency
    /// histogram (the producer's start-up: metadata, producer id).
    measure_from: Instant,
}

#[derive(Clone)]
struct Shared(Arc<Ctx>);

impl ClientContext for Shared {}

impl ProducerContext for Shared {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, r: &DeliveryResult<'_>, sent: Box<Instant>) {
        match r {
            Ok(_) => {
                if *sent >= self.0.measure_from {
                    self.0
                        .latency
                        .lock()
                        .unwrap()
                        .saturating_record(sent.elapsed().as_micros() as u64);
                }
                self.0.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                if self.0.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("delivery failed: {e}");
                }
            }
        }
    }
}

/// Commit the open transaction once its `sent` records are acked and
/// nothing of the producer's is in flight; the commit's latency (EndTxn
/// and its markers) goes to `commits`. Waiting here keeps a client
/// artifact out of the figure: the rdkafka crate's commit_transaction
/// flushes first, and its flush sleeps in 100 ms polls whenever anything
/// is still queued (a delivery report being freed by the producer's
/// thread is enough).
fn commit(
    producer: &ThreadedProducer<Shared>,
    ctx: &Ctx,
    sent: u64,
    commits: &mut Histogram<u64>,
) -> Result<()> {
    while ctx.acked.load(Ordering::Relaxed) + ctx.failed.load(Ordering::Relaxed) < sent
        || producer.in_flight_count() > 0
    {
        std::thread::sleep(Duration::from_micros(50));
    }
    let t = Instant::now();
    producer.commit_transaction(Duration::from_secs(60))?;
    commits.saturating_record(t.elapsed().as_micros() as u64);
    Ok(())
}

/// Create `topic` with `partitions` partitions (an existing one is left
/// as it is).
fn create_topic(base: &ClientConfig, topic: &str, partitions: i32) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = base.create()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = rt.block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

/// A client's configuration: the bootstrap address, Nagle off, and every
/// -X property (a subcommand's own settings, such as acks, come after).
fn client(cli: &Cli) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cli.bootstrap)
        .set("socket.nagle.disable", "true");
    for (k, v) in &cli.properties {
        c.set(k, v);
    }
    c
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let base = client(&cli);
    match cli.cmd {
        Cmd::OtlpSink { listen, count_file } => otlp::serve(&listen, count_file)?,
        Cmd::Produce {
            records,
            record_size,
            acks,
            batch_bytes,
            linger_ms,
            rate,
            compression,
            transaction_records,
            keys,
            warmup_ms,
            create_partitions,
        } => {
            if create_partitions > 0 {
                create_topic(&base, &cli.topic, create_partitions)?;
            }
            let ctx = Arc::new(Ctx {
                latency: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
                acked: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                measure_from: Instant::now() + Duration::from_millis(warmup_ms),
            });
            let mut config = base.clone();
            if transaction_records > 0 {
                config.set(
                    "transactional.id",
                    format!("floe-bench-{}", std::process::id()),
                );
            }
            let producer: ThreadedProducer<Shared> = config
                .set("acks", &acks)
                .set("batch.size", batch_bytes.to_string())
                .set("message.max.bytes", (batch_bytes + 65536).to_string())
                .set("linger.ms", linger_ms.to_string())
                .set("compression.codec", &compression)
                .set("queue.buffering.max.kbytes", "1048576")
                .set("queue.buffering.max.messages", "1000000")
                .create_with_context(Shared(ctx.clone()))?;
            let payload = vec![b'x'; record_size];
            let mut commits = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            if transaction_records > 0 {
                producer.init_transactions(Duration::from_secs(30))?;
            }
            let start = Instant::now();
            for i in 0..records {
                if transaction_records > 0 && i % transaction_records == 0 {
                    if i > 0 {
                        commit(&producer, &ctx, i, &mut commits)?;
                    }
                    producer.begin_transaction()?;
                }
                if rate > 0 {
                    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                }
                let key = (keys > 0).then(|| format!("k{}", i % keys));
                let mut rec = BaseRecord::<str, [u8], Box<Instant>>::with_opaque_to(
                    &cli.topic,
                    Box::new(Instant::now()),
                )
                .payload(&payload[..]);
                if let Some(k) = &key {
                    rec = rec.key(k.as_str());
                }
                loop {
                    match producer.send(rec) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                            rec = r;
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        Err((e, _)) => bail!("send failed: {e}"),
                    }
                }
            }
            if transaction_records > 0 {
                commit(&producer, &ctx, records, &mut commits)?;
            }
            producer.flush(Duration::from_secs(120))?;
            let secs = start.elapsed().as_secs_f64();
            let acked = ctx.acked.load(Ordering::Relaxed);
            let h = ctx.latency.lock().unwrap();
            println!(
                "produce: {acked} records acked ({} failed) in {secs:.2} s: {:.0} records/s, {:.1} MB/s; latency ms p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
                ctx.failed.load(Ordering::Relaxed),
                acked as f64 / secs,
                acked as f64 * record_size as f64 / secs / 1e6,
                pct(&h, 0.5),
                pct(&h, 0.99),
                pct(&h, 0.999),
                h.max() as f64 / 1000.0
            );
            if transaction_records > 0 {
                println!(
                    "transactions: {} of {transaction_records} records committed: {:.1} commits/s; commit ms p50 {:.2} p99 {:.2} max {:.2}",
                    commits.len(),
                    commits.len() as f64 / secs,
                    pct(&commits, 0.5),
                    pct(&commits, 0.99),
                    commits.max() as f64 / 1000.0
                );
            }
        }
        Cmd::PackedProduce {
            records,
            record_size,
            rate,
            partitions,
            linger_ms,
            max_in_flight,
            warmup_ms,
        } => {
            let r = packed::run(packed::Options {
                bootstrap: cli.bootstrap.clone(),
                topic: cli.topic.clone(),
                partitions,
                records,
                record_size,
                rate,
                linger_ms,
                max_in_flight,
                warmup_ms,
            })?;
            if let Some(e) = &r.first_error {
                eprintln!("produce failed: {e}");
            }
            let h = &r.latency;
            println!(
                "produce: {} records acked ({} failed) in {:.2} s: {:.0} records/s, {:.1} MB/s; {} requests; latency ms p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
                r.acked,
                r.failed,
                r.secs,
                r.acked as f64 / r.secs,
                r.acked as f64 * record_size as f64 / r.secs / 1e6,
                r.requests,
                pct(h, 0.5),
                pct(h, 0.99),
                pct(h, 0.999),
                h.max() as f64 / 1000.0
            );
        }
        Cmd::Consume {
            records,
            partitions,
        } => {
            let c: BaseConsumer = base
                .clone()
                .set("group.id", "floe-bench")
                .set("enable.auto.commit", "false")
                .set("fetch.max.bytes", "52428800")
                .set("max.partition.fetch.bytes", "10485760")
                .set("queued.max.messages.kbytes", "1048576")
                .create()?;
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition_offset(&cli.topic, p, Offset::Beginning)?;
            }
            c.assign(&tpl)?;
            let start = Instant::now();
            let (mut n, mut bytes) = (0u64, 0u64);
            let mut first = None;
            let deadline = start + Duration::from_secs(600);
            while n < records && Instant::now() < deadline {
                if let Some(m) = c.poll(Duration::from_millis(500)) {
                    let m = m?;
                    first.get_or_insert_with(Instant::now);
                    n += 1;
                    bytes += m.payload_len() as u64;
                }
            }
            let secs = start.elapsed().as_secs_f64();
            // Without the start-up (metadata, offsets, the first fetch).
            let streaming = first.map_or(secs, |f| f.elapsed().as_secs_f64());
            println!(
                "consume: {n} records, {:.1} MB in {secs:.2} s: {:.0} records/s, {:.1} MB/s; from the first record {:.1} MB/s",
                bytes as f64 / 1e6,
                n as f64 / secs,
                bytes as f64 / secs / 1e6,
                bytes as f64 / streaming / 1e6
            );
        }
        Cmd::Connect { connections } => {
            let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            let start = Instant::now();
            for _ in 0..connections {
                let t = Instant::now();
                let c: BaseConsumer = base.create()?;
                c.fetch_metadata(Some(&cli.topic), Duration::from_secs(30))?;
                h.saturating_record(t.elapsed().as_micros() as u64);
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "connect: {} connections in {secs:.2} s; to first answer ms p50 {:.2} p99 {:.2} max {:.2}",
                h.len(),
                pct(&h, 0.5),
                pct(&h, 0.99),
                h.max() as f64 / 1000.0
            );
        }
        Cmd::EndToEnd {
            records,
            record_size,
            rate,
        } => {
            let c: BaseConsumer = base
                .clone()
                .set("group.id", "floe-bench")
                .set("fetch.wait.max.ms", "500")
                .set("enable.auto.commit", "false")
                .create()?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&cli.topic, 0, Offset::End)?;
            c.assign(&tpl)?;
            std::thread::sleep(Duration::from_secs(1));
            let ctx = Arc::new(Ctx {
                latency: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
                acked: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                measure_from: Instant::now(),
            });
            let producer: ThreadedProducer<Shared> = base
                .clone()
                .set("acks", "all")
                .set("linger.ms", "0")
                .create_with_context(Shared(ctx.clone()))?;
            let sender = std::thread::spawn({
                let topic = cli.topic.clone();
                move || {
                    let start = Instant::now();
                    let mut payload = vec![b'x'; record_size.max(16)];
                    for i in 0..records {
                        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let micros = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap()
                            .as_micros() as u64;
                        payload[..8].copy_from_slice(&micros.to_be_bytes());
                        let _ = producer.send(
                            BaseRecord::<(), [u8], Box<Instant>>::with_opaque_to(
                                &topic,
                                Box::new(Instant::now()),
                            )
                            .partition(0)
                            .payload(&payload[..]),
                        );
                    }
                    producer.flush(Duration::from_secs(60))
                }
            });
            let mut e2e = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            let deadline = Instant::now() + Duration::from_secs(records / rate.max(1) + 60);
            while e2e.len() < records && Instant::now() < deadline {
                if let Some(m) = c.poll(Duration::from_millis(200)) {
                    let m = m?;
                    let p = m.payload().unwrap_or_default();
                    if p.len() >= 8 {
                        let sent = u64::from_be_bytes(p[..8].try_into().unwrap());
                        let now = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap()
                            .as_micros() as u64;
                        e2e.saturating_record(now.saturating_sub(sent));
                    }
                }
            }
            sender.join().unwrap()?;
            let h = ctx.latency.lock().unwrap();
            println!(
                "end-to-end at {rate} records/s: {} records; produce ms p50 {:.2} p99 {:.2} p99.9 {:.2}; end-to-end ms p50 {:.2} p99 {:.2} p99.9 {:.2}",
                e2e.len(),
                pct(&h, 0.5),
                pct(&h, 0.99),
                pct(&h, 0.999),
                pct(&e2e, 0.5),
                pct(&e2e, 0.99),
                pct(&e2e, 0.999)
            );
        }
    }
    Ok(())
}

/// The trace service of an OTLP collector that only counts spans.
mod otlp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };

    struct Counter {
        spans: AtomicU64,
        file: String,
    }

    #[derive(Clone)]
    struct Sink(Arc<Counter>);

    #[tonic::async_trait]
    impl TraceService for Sink {
        async fn export(
            &self,
            r: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let n: usize = r
                .into_inner()
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .map(|ss| ss.spans.len())
                .sum();
            let total = self.0.spans.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            std::fs::write(&self.0.file, format!("{total}\n"))
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    /// Serve until killed.
    pub fn serve(listen: &str, file: String) -> anyhow::Result<()> {
        std::fs::write(&file, "0\n")?;
        let addr = listen.parse()?;
        let sink = Sink(Arc::new(Counter {
            spans: AtomicU64::new(0),
            file,
        }));
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async move {
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(sink))
                    .serve(addr)
                    .await
            })?;
        Ok(())
    }
}
