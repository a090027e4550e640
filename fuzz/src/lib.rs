//! The bodies of Floe's fuzz targets: every decoder that takes bytes from
//! outside the process (a Kafka client's request frames and record
//! batches, storage objects read back, the tail push and admin API
//! protobufs, SASL tokens) fed arbitrary input through the same functions
//! the servers call. A target passes an input when nothing panics, no
//! single allocation exceeds [`MAX_ALLOCATION`] (a length field trusted),
//! and every refusal is an error with a message.
//!
//! Checksummed formats are fuzzed twice over: as given, and with their
//! CRCs made right (the first input byte says which), so the fuzzer gets
//! past the checksum to the code behind it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use floe_protocol::kafka_protocol::messages::RequestKind;

/// The largest single allocation an input may cause: a batch's records
/// decompressing up to their bound (`MAX_DECOMPRESSED_BATCH`, 64 MiB; the
/// growing buffer may double past it once). Inputs are at most 64 KiB;
/// anything larger came from a length field.
pub const MAX_ALLOCATION: usize = 160 << 20;

/// The global allocator of every target: the system's, aborting the run
/// (a crash libFuzzer records with its input) on an allocation over
/// [`MAX_ALLOCATION`].
pub struct Bounded;

fn too_large(size: usize) -> ! {
    use std::io::Write;
    let mut e = std::io::stderr();
    let _ = e.write_all(b"floe-fuzz: an allocation over MAX_ALLOCATION (a length field trusted): ");
    let mut digits = [0u8; 20];
    let mut n = size;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let _ = e.write_all(&digits[i..]);
    let _ = e.write_all(b" bytes\n");
    std::process::abort()
}

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            too_large(layout.size());
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            too_large(layout.size());
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            too_large(new_size);
        }
        System.realloc(ptr, layout, new_size)
    }
}

/// One runtime per fuzzing process for the async decoders.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// A refusal must say why.
fn explained<E: std::fmt::Display>(what: &str, e: E) {
    let msg = e.to_string();
    assert!(!msg.trim().is_empty(), "{what}: an error without a message");
}

/// The first byte as a flag: fix checksums (odd) or not; the rest.
fn split_flag(data: &[u8]) -> Option<(bool, &[u8])> {
    let (&first, rest) = data.split_first()?;
    Some((first & 1 == 1, rest))
}

/// Recompute the CRC32C of every complete v2 batch in `buf`.
pub fn fix_batch_crcs(buf: &mut [u8]) {
    let mut pos = 0;
    while let Some((at, h)) = floe_protocol::batch::Batches::new(&buf[pos..]).next() {
        let start = pos + at;
        let end = start + h.total_len();
        let crc = crc32c(&buf[start + 21..end]);
        buf[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
        pos = end;
    }
}

fn crc32c(b: &[u8]) -> u32 {
    crc32c::crc32c(b)
}

/// Make a chunk object's CRCs right: its batches', its payload's (bytes
/// 44..48 over everything after the 52-byte header) and its header's
/// (bytes 48..52 over the first 48).
pub fn fix_chunk_crcs(buf: &mut [u8]) {
    const HEADER: usize = 52;
    if buf.len() < HEADER {
        return;
    }
    fix_batch_crcs(&mut buf[HEADER..]);
    let payload = crc32c(&buf[HEADER..]);
    buf[44..48].copy_from_slice(&payload.to_be_bytes());
    let header = crc32c(&buf[..48]);
    buf[48..52].copy_from_slice(&header.to_be_bytes());
}

/// Make a shared WAL object's CRCs right (storage/src/wal.rs): each
/// entry's payload CRC over its byte range (where that range lies before
/// the index), the index's and the footer's.
pub fn fix_wal_crcs(buf: &mut [u8]) {
    use floe_storage::wal::{ENTRY_LEN, FOOTER_LEN};
    if buf.len() < FOOTER_LEN {
        return;
    }
    let f = buf.len() - FOOTER_LEN;
    let index_pos = u64::from_be_bytes(buf[f..f + 8].try_into().unwrap());
    let entries = u32::from_be_bytes(buf[f + 8..f + 12].try_into().unwrap()) as u64;
    if index_pos.checked_add(entries * ENTRY_LEN as u64) == Some(f as u64) {
        let index_pos = index_pos as usize;
        let ranges: Vec<(usize, std::ops::Range<usize>)> = (0..entries as usize)
            .filter_map(|i| {
                let e = index_pos + i * ENTRY_LEN;
                let pos = u64::from_be_bytes(buf[e + 64..e + 72].try_into().unwrap());
                let len = u32::from_be_bytes(buf[e + 72..e + 76].try_into().unwrap()) as u64;
                let end = pos
                    .checked_add(len)
                    .filter(|end| *end <= index_pos as u64)?;
                Some((e, pos as usize..end as usize))
            })
            .collect();
        // Batches first, CRCs after: ranges may overlap, and fixing one
        // range's batches may change another's bytes.
        for (_, r) in &ranges {
            fix_batch_crcs(&mut buf[r.clone()]);
        }
        for (e, r) in ranges {
            let crc = crc32c(&buf[r]);
            buf[e + 60..e + 64].copy_from_slice(&crc.to_be_bytes());
        }
        let index = crc32c(&buf[index_pos..f]);
        buf[f + 12..f + 16].copy_from_slice(&index.to_be_bytes());
    }
    let footer = crc32c(&buf[f..f + 40]);
    buf[f + 40..f + 44].copy_from_slice(&footer.to_be_bytes());
}

/// Make a segment tail's CRCs right: the index's (footer bytes 56..60)
/// and the footer's (bytes 60..64 over its first 60).
pub fn fix_segment_crcs(buf: &mut [u8]) {
    const FOOTER: usize = 64;
    if buf.len() < FOOTER {
        return;
    }
    let f = buf.len() - FOOTER;
    let index = crc32c(&buf[..f]);
    buf[f + 56..f + 60].copy_from_slice(&index.to_be_bytes());
    let footer = crc32c(&buf[f..f + 60]);
    buf[f + 60..].copy_from_slice(&footer.to_be_bytes());
}

// ---------------------------------------------------------------- Kafka

/// A request frame as the listener hands it to the dispatcher (without
/// its length prefix): the head, the header and the body decoded for the
/// API and version the frame names (every advertised one, legacy versions
/// included), then what the edge decodes further before a handler runs —
/// the trace context in the header's tagged fields, and for Produce each
/// partition's records: old message sets converted, batches validated,
/// records decoded as a compacted topic's key check and the first
/// record's `traceparent` lookup do.
pub fn kafka_request(data: &[u8]) {
    static METRICS: OnceLock<floe_kafka::metrics::RequestMetrics> = OnceLock::new();
    let metrics = METRICS.get_or_init(|| floe_kafka::metrics::RequestMetrics::with_prefix("fuzz"));
    floe_kafka::trace::enable();
    let frame = Bytes::copy_from_slice(data);
    let (api, version, _) = match floe_kafka::listener::request_head(&frame, metrics) {
        Ok(head) => head,
        Err(_) => return,
    };
    let (header, kind) = match floe_kafka::listener::decode_frame(&frame, api, version) {
        Ok(decoded) => decoded,
        Err(e) => return explained("request", e),
    };
    let _ = floe_kafka::trace::parent_of(&header.unknown_tagged_fields);
    if let RequestKind::Produce(p) = kind {
        for t in &p.topic_data {
            for part in &t.partition_data {
                if let Some(records) = &part.records {
                    produce_records(records.clone(), version);
                }
            }
        }
    }
}

/// One partition's records of a produce request, as the broker's and the
/// proxy's produce paths take them.
fn produce_records(mut records: Bytes, version: i16) {
    if version < 3 {
        match floe_protocol::legacy::upconvert(&records, 0) {
            Ok(r) => records = r,
            Err(e) => return explained("message set", e),
        }
    }
    let _ = floe_kafka::trace::parent_from_records(&records);
    match floe_protocol::batch::validate_for_produce(&records, 1 << 20) {
        Ok(headers) => {
            assert!(!headers.is_empty(), "a valid produce has a batch");
            let _ = floe_protocol::batch::keyless_records(&records);
        }
        Err(e) => explained("batches", e),
    }
}

/// Record batches as a produce carries them and as a log holds them:
/// validation, iteration, transaction markers, the keys a compacted
/// topic's check and compaction read, and down-conversion for old
/// consumers.
pub fn record_batches(data: &[u8]) {
    let Some((fix, rest)) = split_flag(data) else {
        return;
    };
    let mut buf = rest.to_vec();
    if fix {
        fix_batch_crcs(&mut buf);
    }
    let records = Bytes::from(buf);
    match floe_protocol::batch::validate_for_produce(&records, usize::MAX) {
        Ok(_) => {
            let _ = floe_protocol::batch::keyless_records(&records);
        }
        Err(e) => explained("batches", e),
    }
    let mut count = 0usize;
    for (at, h) in floe_protocol::batch::Batches::new(&records) {
        let batch = &records[at..at + h.total_len()];
        let _ = (
            h.last_offset(),
            h.next_offset(),
            h.timestamp_type(),
            h.compression(),
        );
        if floe_protocol::control::is_marker(&h) {
            let _ = floe_protocol::control::parse_marker(batch);
        }
        count += 1;
    }
    let mut keys = floe_storage::compact::KeyOffsets::new();
    if let Err(e) = floe_storage::compact::index_keys(&records, &mut keys, &|_| false) {
        explained("compaction's key index", e);
    }
    for magic in [0i8, 1] {
        if let Err(e) = floe_protocol::legacy::downconvert(&records, magic) {
            explained("down-conversion", e);
        }
    }
    let _ = count;
}

/// Message sets of formats v0 and v1 (Produce v0–2 and old logs).
pub fn legacy_message_set(data: &[u8]) {
    match floe_protocol::legacy::read_message_set(data) {
        Ok(_) => {}
        Err(e) => explained("message set", e),
    }
    match floe_protocol::legacy::upconvert(data, 0) {
        Ok(batches) => {
            // What up-conversion makes must pass the produce checks.
            if !batches.is_empty() {
                floe_protocol::batch::validate_for_produce(&batches, usize::MAX)
                    .expect("up-converted batches are valid");
            }
        }
        Err(e) => explained("message set", e),
    }
}

// -------------------------------------------------------------- storage

/// A chunk object read back from a storage target (or its header alone,
/// from a ranged read).
pub fn chunk(data: &[u8]) {
    let Some((fix, rest)) = split_flag(data) else {
        return;
    };
    let mut buf = rest.to_vec();
    if fix {
        fix_chunk_crcs(&mut buf);
    }
    let buf = Bytes::from(buf);
    if let Err(e) = floe_storage::chunk::decode_header("fuzz", &buf) {
        explained("chunk header", e);
    }
    match floe_storage::chunk::decode("fuzz", &buf) {
        Ok((h, payload)) => {
            assert_eq!(payload.len(), h.payload_len as usize);
        }
        Err(e) => explained("chunk", e),
    }
}

/// A segment object's index and footer read back from a storage target,
/// and the lookups a read makes in it.
pub fn segment(data: &[u8]) {
    let Some((fix, rest)) = split_flag(data) else {
        return;
    };
    let mut buf = rest.to_vec();
    if fix {
        fix_segment_crcs(&mut buf);
    }
    match floe_storage::segment::SegmentIndex::parse("fuzz", &buf) {
        Ok(index) => {
            let s = &index.summary;
            for o in [i64::MIN, -1, 0, s.base_offset, s.end_offset, i64::MAX] {
                let _ = index.position_for(o);
            }
            for t in [i64::MIN, 0, s.max_timestamp, i64::MAX] {
                let _ = index.scan_start_for_time(t);
            }
        }
        Err(e) => explained("segment", e),
    }
}

/// A shared WAL object read back from a storage target (issue 24): the
/// footer alone (recovery's ranged read), the index, the whole object, and
/// every chunk range the index names, as a reader checks it.
pub fn wal(data: &[u8]) {
    use floe_storage::wal::{self, WalId, FOOTER_LEN};
    let Some((fix, rest)) = split_flag(data) else {
        return;
    };
    let mut buf = rest.to_vec();
    if fix {
        fix_wal_crcs(&mut buf);
    }
    // The id the key would name: the footer's own (so the rest is checked),
    // and one it does not name.
    let named = if buf.len() >= FOOTER_LEN {
        let f = &buf[buf.len() - FOOTER_LEN..];
        WalId {
            broker: i32::from_be_bytes(f[16..20].try_into().unwrap()),
            stream: i64::from_be_bytes(f[20..28].try_into().unwrap()),
            seq: i64::from_be_bytes(f[28..36].try_into().unwrap()),
        }
    } else {
        WalId {
            broker: 0,
            stream: 0,
            seq: 0,
        }
    };
    let other = WalId {
        seq: named.seq.wrapping_add(1),
        ..named
    };
    if buf.len() >= FOOTER_LEN {
        let tail = &buf[buf.len() - FOOTER_LEN..];
        match wal::decode_footer("fuzz", tail, buf.len() as u64, named) {
            Ok(footer) => {
                let r = footer.index_range();
                assert!(r.end + FOOTER_LEN as u64 == buf.len() as u64);
                if let Err(e) =
                    wal::decode_index("fuzz", &footer, &buf[r.start as usize..r.end as usize])
                {
                    explained("WAL index", e);
                }
            }
            Err(e) => explained("WAL footer", e),
        }
        assert!(wal::decode_footer("fuzz", tail, buf.len() as u64, other).is_err());
    }
    let whole = Bytes::from(buf);
    match wal::decode("fuzz", &whole, named) {
        Ok((footer, entries)) => {
            assert_eq!(entries.len(), footer.entries as usize);
            for e in &entries {
                let r = e.range();
                assert!(r.end <= footer.index_pos, "a chunk inside the index");
                let payload = whole.slice(r.start as usize..r.end as usize);
                match wal::verify_chunk("fuzz", e, &payload) {
                    Ok(()) => {}
                    Err(err) => {
                        assert!(!fix, "fixed CRCs still fail: {err}");
                        explained("WAL chunk", err);
                    }
                }
            }
        }
        Err(e) => explained("WAL object", e),
    }
}

// ------------------------------------------------------- internal RPCs

/// The storage pool a follower resolves replica sets in.
fn pool() -> &'static floe_storage::StoragePool {
    static POOL: OnceLock<floe_storage::StoragePool> = OnceLock::new();
    POOL.get_or_init(|| {
        let targets = ["t0", "t1", "t2"]
            .iter()
            .map(|id| floe_storage::StorageTarget::open(*id, "memory://").expect("a memory target"))
            .collect();
        floe_storage::StoragePool::with_seed(targets, 2, 2, 7).expect("a pool")
    })
}

/// A tail push stream as a proxy follows it: messages, each a 2-byte
/// length then that many bytes of a `LogUpdate`, applied in order to a
/// followed partition log as the proxy does, then reads of that log at a
/// few offsets (the log's storage is empty: a read finds nothing or fails
/// with an error, never panics).
pub fn tail_update(data: &[u8]) {
    use floe_rpc::tail::{append_chunks, append_txns, pb, snapshot_state};
    use prost::Message;
    let log = floe_storage::log::PartitionLog::new(
        floe_common::PartitionId::new(floe_common::Uuid::nil(), 0),
        floe_storage::log::LogState::default(),
        floe_storage::BlockCache::new(1 << 20),
    );
    let mut rest = data;
    while rest.len() >= 2 {
        let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let msg = &rest[2..(2 + n).min(rest.len())];
        rest = &rest[(2 + n).min(rest.len())..];
        let update = match pb::LogUpdate::decode(msg) {
            Ok(u) => u,
            Err(e) => {
                explained("tail message", e);
                continue;
            }
        };
        match update.kind {
            Some(pb::log_update::Kind::Snapshot(s)) => match snapshot_state(&s, pool()) {
                Ok(state) => log.replace(state),
                Err(e) => explained("snapshot", e),
            },
            Some(pb::log_update::Kind::Append(a)) => {
                let (log_start, hw) = (a.log_start_offset, a.high_watermark);
                let (first_unstable, aborted) = append_txns(&a);
                match append_chunks(a, pool()) {
                    Ok(chunks) => log.apply_append(chunks, log_start, hw, first_unstable, aborted),
                    Err(e) => explained("append", e),
                }
            }
            None => {}
        }
    }
    let (start, hw, _) = log.offsets();
    let _ = log.last_stable_offset();
    runtime().block_on(async {
        for o in [start, hw, start.saturating_add(1), 0, -1] {
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                log.read(o, 1 << 16, true),
            )
            .await
            .expect("a read of an empty store does not hang");
            if let Err(e) = read {
                explained("read", e);
            }
        }
        let _ = log.aborted_markers(start, hw);
        let _ = log.offset_for_timestamp(0).await;
    });
}

/// The admin service the admin target calls, over a metadata store of
/// its own (a fresh one every 2,000 inputs, so a long run stays small).
fn admin_service() -> Arc<floe_controller::admin::AdminService> {
    use std::sync::Mutex;
    static SVC: Mutex<
        Option<(
            Arc<floe_controller::admin::AdminService>,
            u32,
            tempfile::TempDir,
        )>,
    > = Mutex::new(None);
    let mut slot = SVC.lock().unwrap();
    if let Some((svc, uses, _)) = slot.as_mut() {
        *uses += 1;
        if *uses < 2_000 {
            return svc.clone();
        }
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let svc = runtime().block_on(async {
        let meta: Arc<dyn floe_meta::MetadataStore> = Arc::new(
            floe_meta::EmbeddedStore::open(dir.path().join("meta.redb"))
                .await
                .expect("an embedded store"),
        );
        seed_cluster(&*meta).await;
        let state = Arc::new(floe_controller::admin::state::ControllerState::new(
            meta,
            "fuzz".into(),
            None,
            None,
        ));
        Arc::new(floe_controller::admin::AdminService::new(state))
    });
    *slot = Some((svc.clone(), 0, dir));
    svc
}

/// What a controller seeds: the cluster id and a pool of memory targets.
async fn seed_cluster(meta: &dyn floe_meta::MetadataStore) {
    use floe_meta::schema::{StoragePoolRecord, StorageTargetRecord, FORMAT};
    use prost::Message;
    floe_controller::ensure_cluster_id(meta, 0)
        .await
        .expect("a cluster id");
    let pool = StoragePoolRecord {
        format: FORMAT,
        targets: (0..3)
            .map(|i| StorageTargetRecord {
                id: format!("t{i}"),
                url: "memory://".into(),
                weight: 1,
                ..Default::default()
            })
            .collect(),
        replicas: 2,
        write_quorum: 2,
    };
    meta.put(
        &floe_meta::keys::storage_pool(),
        pool.encode_to_vec().into(),
    )
    .await
    .expect("the pool record");
}

/// An admin API call: the first byte picks the RPC, the rest is its
/// protobuf request, decoded as tonic would and served by the controller's
/// admin service over a real (embedded) metadata store. An invalid
/// request is a gRPC status with a message.
pub fn admin_request(data: &[u8]) {
    use floe_controller::admin::AdminService;
    use floe_rpc::admin::admin_server::Admin;
    use floe_rpc::admin::*;
    use prost::Message;
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let svc = admin_service();
    fn call<M, R, F>(svc: &Arc<AdminService>, body: &[u8], f: F)
    where
        M: Message + Default,
        F: for<'a> FnOnce(
            &'a AdminService,
            tonic::Request<M>,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>
                    + Send
                    + 'a,
            >,
        >,
    {
        let m = match M::decode(body) {
            Ok(m) => m,
            Err(e) => return explained("admin message", e),
        };
        let out = runtime().block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                f(svc, tonic::Request::new(m)),
            )
            .await
        });
        match out.expect("an admin call on a local store does not hang") {
            Ok(_) => {}
            Err(status) => explained("admin status", status.message()),
        }
    }
    match which % 12 {
        0 => call::<CreateTopicRequest, _, _>(&svc, body, |s, r| s.create_topic(r)),
        1 => call::<AlterTopicConfigsRequest, _, _>(&svc, body, |s, r| s.alter_topic_configs(r)),
        2 => call::<DeleteTopicRequest, _, _>(&svc, body, |s, r| s.delete_topic(r)),
        3 => call::<DescribeTopicRequest, _, _>(&svc, body, |s, r| s.describe_topic(r)),
        4 => call::<DescribePartitionRequest, _, _>(&svc, body, |s, r| s.describe_partition(r)),
        5 => call::<AddStorageTargetRequest, _, _>(&svc, body, |s, r| s.add_storage_target(r)),
        6 => call::<Acl, _, _>(&svc, body, |s, r| s.create_acl(r)),
        7 => call::<AclFilter, _, _>(&svc, body, |s, r| s.delete_acls(r)),
        8 => call::<AclFilter, _, _>(&svc, body, |s, r| s.list_acls(r)),
        9 => call::<OperationRequest, _, _>(&svc, body, |s, r| s.get_operation(r)),
        10 => call::<RebalanceRequest, _, _>(&svc, body, |s, r| s.plan_rebalance(r)),
        _ => call::<ListTopicsRequest, _, _>(&svc, body, |s, r| s.list_topics(r)),
    }
}

// ----------------------------------------------------------------- SASL

/// Credentials every SCRAM exchange checks against: user "fuzz" with one
/// iteration (the exchange's code, not PBKDF2, is under test).
struct FuzzCreds(Vec<floe_kafka::sasl::ScramCredential>);

impl floe_kafka::sasl::Credentials for FuzzCreds {
    fn scram(
        &self,
        user: &str,
        mechanism: floe_kafka::sasl::ScramMechanism,
    ) -> Option<floe_kafka::sasl::ScramCredential> {
        let c = self.0.iter().find(|c| c.mechanism == mechanism)?;
        (user == "fuzz").then(|| c.clone())
    }
}

/// A SASL exchange: the first byte picks the mechanism (PLAIN,
/// SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER), the rest is the client's
/// tokens, each a 2-byte length then its bytes, fed in order as
/// SaslAuthenticate would, until the exchange ends.
pub fn sasl(data: &[u8]) {
    use floe_kafka::sasl::{Mechanism, SaslServer, ScramCredential, ScramMechanism, Step};
    static CREDS: OnceLock<FuzzCreds> = OnceLock::new();
    static OAUTH: OnceLock<Arc<floe_kafka::oauth::OAuthValidator>> = OnceLock::new();
    let creds = CREDS.get_or_init(|| {
        FuzzCreds(
            [ScramMechanism::Sha256, ScramMechanism::Sha512]
                .into_iter()
                .map(|m| ScramCredential::new(m, "secret", 1))
                .collect(),
        )
    });
    let Some((&which, mut rest)) = data.split_first() else {
        return;
    };
    let secret: Arc<[u8]> = Arc::from(&b"fuzz-process-secret"[..]);
    let mut server = match which % 4 {
        0 => SaslServer::new(Mechanism::Plain, secret),
        1 => SaslServer::new(Mechanism::Scram(ScramMechanism::Sha256), secret),
        2 => SaslServer::new(Mechanism::Scram(ScramMechanism::Sha512), secret),
        _ => SaslServer::oauth(Some(OAUTH.get_or_init(oauth_validator).clone()), secret),
    };
    while rest.len() >= 2 {
        let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let token = &rest[2..(2 + n).min(rest.len())];
        rest = &rest[(2 + n).min(rest.len())..];
        match server.step(token, creds) {
            Ok(Step::Continue(_)) => {}
            Ok(Step::Done { principal, .. }) => {
                assert!(principal.starts_with("User:"), "{principal}");
                break;
            }
            Err(e) => {
                explained("sasl", e);
                break;
            }
        }
    }
}

/// An OAUTHBEARER validator with one ES256 public key.
fn oauth_validator() -> Arc<floe_kafka::oauth::OAuthValidator> {
    let dir = std::env::temp_dir().join(format!("floe-fuzz-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("jwks.json");
    std::fs::write(&path, JWKS).expect("the JWKS file");
    let settings = floe_kafka::oauth::OAuthSettings {
        jwks: format!("file://{}", path.display()),
        audience: vec!["floe".into()],
        ..Default::default()
    };
    runtime()
        .block_on(async { floe_kafka::oauth::OAuthValidator::new(settings) })
        .expect("a validator")
}

/// A public P-256 key (its private half is not needed: no input can sign).
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"fuzz","alg":"ES256","use":"sig",
"x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

pub mod seeds;
