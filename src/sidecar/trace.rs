//! W3C trace context: a record's `traceparent`/`tracestate` headers make its `sync.record`
//! span (decode, hand-off to the engine) a child of the producer's span, so a trace that
//! started at the producer continues through the sidecar. Spans leave the process through the
//! OpenTelemetry layer the binary installs when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Kafka headers as the propagator reads them (the last value of a repeated header wins).
struct Headers<'a>(&'a [(&'a str, Option<&'a [u8]>)]);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .and_then(|(_, v)| v.and_then(|v| std::str::from_utf8(v).ok()))
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// The span one record is processed in; a child of its `traceparent`, when it has a valid one.
pub fn record_span(
    headers: &[(&str, Option<&[u8]>)],
    topic: &str,
    partition: i32,
    offset: i64,
) -> Span {
    let span = tracing::info_span!("sync.record", topic, partition, offset);
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    // without an OpenTelemetry layer (or with no valid traceparent) there is nothing to link
    let _ = span.set_parent(parent);
    span
}
