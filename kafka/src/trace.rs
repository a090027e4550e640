//! Trace context across Floe's Kafka hops (issue 22): a span per Kafka
//! request on the proxy and the broker, and the W3C trace context carried
//! from one to the other in a private tagged field of the request header
//! ([`TRACE_TAG`]; tagged fields exist from the flexible header versions
//! on, and Kafka ignores tags it does not know). When tracing is off no
//! tag is written and the spans cost what a disabled `tracing` span costs.
//! The OpenTelemetry pipeline itself is set up by the `floe` binary.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The request header's tagged field carrying `traceparent` (and
/// `tracestate` after a newline, when there is one).
pub const TRACE_TAG: i32 = 0x4F54; // "OT"

/// The header tags for a request sent from within the current span: its
/// trace context, when the span is recorded by OpenTelemetry.
pub fn header_tags() -> BTreeMap<i32, Bytes> {
    let cx = tracing::Span::current().context();
    let mut tags = BTreeMap::new();
    if !cx.span().span_context().is_valid() {
        return tags;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    if let Some(parent) = carrier.get("traceparent") {
        let mut v = parent.clone();
        if let Some(state) = carrier.get("tracestate").filter(|s| !s.is_empty()) {
            v.push('\n');
            v.push_str(state);
        }
        tags.insert(TRACE_TAG, Bytes::from(v));
    }
    tags
}

/// The trace context a request's header carries, if any.
pub fn parent_of(tags: &BTreeMap<i32, Bytes>) -> Option<opentelemetry::Context> {
    let raw = tags.get(&TRACE_TAG)?;
    let text = std::str::from_utf8(raw).ok()?;
    let mut lines = text.splitn(2, '\n');
    let mut carrier: HashMap<String, String> = HashMap::new();
    carrier.insert("traceparent".into(), lines.next()?.to_string());
    if let Some(state) = lines.next() {
        carrier.insert("tracestate".into(), state.to_string());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Make `span` a child of the W3C `traceparent` given (e.g. an admin
/// gRPC request's metadata); nothing when there is none or it is garbage.
pub fn adopt(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else { return };
    let mut tags = BTreeMap::new();
    tags.insert(TRACE_TAG, Bytes::copy_from_slice(tp.as_bytes()));
    if let Some(parent) = parent_of(&tags) {
        let _ = span.set_parent(parent);
    }
}

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Called once traces are exported: requests may then be looked into for
/// a client's trace context.
pub fn enable() {
    ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The trace context a client put in the `traceparent` header of the
/// first record of a produce (as OpenTelemetry's Kafka instrumentations
/// do), only when traces are on: that record's lengths are read in place
/// (a compressed batch's record is not looked into: decompressing every
/// produce for it cost more than the traces).
pub fn parent_from_records(records: &Bytes) -> Option<opentelemetry::Context> {
    if !ENABLED.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let (pos, h) = floe_protocol::batch::Batches::new(records).next()?;
    let v = floe_protocol::batch::first_record_header(
        &records[pos..pos + h.total_len()],
        "traceparent",
    )?;
    let mut tags = BTreeMap::new();
    tags.insert(TRACE_TAG, Bytes::copy_from_slice(v));
    parent_of(&tags)
}

/// The span of one Kafka request served here, a child of the trace the
/// request header carries (a proxy's request span, for a request the proxy
/// forwarded), else of the one its first record carries (`records`: a
/// produce's first record set).
pub fn request_span(
    api: &'static str,
    version: i16,
    client_id: &str,
    tags: &BTreeMap<i32, Bytes>,
    records: Option<&Bytes>,
) -> tracing::Span {
    // Debug level: no cost while traces are off (the OpenTelemetry layer
    // is the only one that takes spans at this level).
    let span = tracing::debug_span!(
        "kafka.request",
        otel.name = api,
        otel.kind = "server",
        kafka.api = api,
        kafka.version = version,
        kafka.client_id = client_id,
    );
    if let Some(parent) = parent_of(tags).or_else(|| records.and_then(parent_from_records)) {
        let _ = span.set_parent(parent);
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_context_round_trips_through_the_tag_and_garbage_is_ignored() {
        let mut tags = BTreeMap::new();
        tags.insert(
            TRACE_TAG,
            Bytes::from_static(
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nvendor=x",
            ),
        );
        let cx = parent_of(&tags).expect("a parent");
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
        assert_eq!(sc.trace_state().header(), "vendor=x");
        for bad in [&b"not a traceparent"[..], b"\xff\xfe", b""] {
            tags.insert(TRACE_TAG, Bytes::copy_from_slice(bad));
            assert!(parent_of(&tags).is_none());
        }
        // No OpenTelemetry layer: nothing to carry.
        assert!(header_tags().is_empty());
    }
}
