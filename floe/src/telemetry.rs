//! Logs and traces of a Floe process: `tracing` events to stderr as text
//! or JSON lines (`FLOE_LOG_FORMAT`, filtered by `FLOE_LOG`; a JSON line
//! carries the `trace_id` and `span_id` of its span), and spans to
//! an OpenTelemetry collector over OTLP/gRPC when the standard environment
//! asks for it — off by default. On when `OTEL_TRACES_EXPORTER=otlp` or an
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
//! set, unless `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none` or
//! `OTEL_TRACES_SAMPLER=always_off`. Sampling: `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` as the SDK reads them, parent-based ratio
//! sampling (ratio 1) when unset, so a client's sampled `traceparent`
//! (its produce's first record header) decides. Resource: `service.name` is `floe-{role}` unless
//! `OTEL_SERVICE_NAME` says otherwise, plus `OTEL_RESOURCE_ATTRIBUTES`.
//! Batching: `OTEL_BSP_*`.

use anyhow::{bail, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `FLOE_LOG_FORMAT`, checked before anything else runs.
pub fn log_format() -> Result<LogFormat> {
    match std::env::var("FLOE_LOG_FORMAT").as_deref() {
        Ok("json") => Ok(LogFormat::Json),
        Ok("text") | Ok("") | Err(std::env::VarError::NotPresent) => Ok(LogFormat::Text),
        Ok(other) => bail!("FLOE_LOG_FORMAT must be text or json, not {other:?}"),
        Err(e) => bail!("FLOE_LOG_FORMAT: {e}"),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether the environment asks for traces.
pub fn traces_wanted() -> bool {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return false;
    }
    match env("OTEL_TRACES_EXPORTER").as_deref() {
        Some("none") => return false,
        Some("otlp") => {}
        Some(_) | None => {
            if env("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
                && env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
            {
                return false;
            }
        }
    }
    env("OTEL_TRACES_SAMPLER").as_deref() != Some("always_off")
}

/// A JSON line formatter that adds the OpenTelemetry `trace_id` and
/// `span_id` of the span the event happened in (when traces are on and
/// the span is recorded), so a log line leads to its trace.
struct WithTraceIds<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let mut line = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        let current = tracing::Span::current();
        if !current.is_none() {
            let cx = current.context();
            let sc = cx.span().span_context().clone();
            if sc.is_valid() {
                if let Ok(serde_json::Value::Object(mut m)) =
                    serde_json::from_str::<serde_json::Value>(line.trim_end())
                {
                    m.insert("trace_id".into(), sc.trace_id().to_string().into());
                    m.insert("span_id".into(), sc.span_id().to_string().into());
                    return writeln!(writer, "{}", serde_json::Value::Object(m));
                }
            }
        }
        writer.write_str(&line)
    }
}

/// What must live as long as the process: the tracer provider, flushed
/// when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("flushing traces at exit failed: {e}");
            }
        }
    }
}

/// Install the `tracing` subscriber for a process of `role` ("broker",
/// "proxy", "controller", "standalone"). Call from within the Tokio
/// runtime (the OTLP exporter's gRPC channel needs it).
pub fn init(format: LogFormat, role: &str) -> Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| "info".into());
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(WithTraceIds(
                tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(true),
            ))
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colours only on a terminal: files and container logs get plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
    };
    let provider = if traces_wanted() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if env("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(format!("floe-{role}"));
        }
        let mut builder = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build());
        if env("OTEL_TRACES_SAMPLER").is_none() {
            let ratio = env("OTEL_TRACES_SAMPLER_ARG")
                .and_then(|a| a.parse::<f64>().ok())
                .unwrap_or(1.0);
            builder = builder.with_sampler(Sampler::ParentBased(Box::new(
                Sampler::TraceIdRatioBased(ratio),
            )));
        }
        Some(builder.build())
    } else {
        None
    };
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("floe"))
            // Spans only, down to debug (a request's and its storage
            // writes' spans are debug, so they cost nothing while traces
            // are off and the logs stay at info); events stay in the logs.
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span() && *m.level() <= tracing::Level::DEBUG
            }))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    if provider.is_some() {
        floe_kafka::trace::enable();
        tracing::info!(role, "OpenTelemetry traces on (OTLP/gRPC)");
    }
    Ok(Telemetry { provider })
}
