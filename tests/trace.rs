//! W3C trace context: a record's `traceparent` makes the sidecar's `sync.record` span (and
//! everything inside it) part of the producer's trace.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use sync_engine::sidecar::trace::record_span;
use tracing_subscriber::layer::SubscriberExt;

/// Runs `work` under an OpenTelemetry layer and returns the spans it exported.
fn exported(work: impl FnOnce()) -> Vec<SpanData> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::with_default(subscriber, work);
    provider.force_flush().unwrap();
    exporter.get_finished_spans().unwrap()
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name}"))
}

#[test]
fn a_traceparent_makes_the_record_span_a_child_of_the_producer() {
    let header: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let headers = [
        ("content-type", Some(&b"application/json"[..])),
        ("traceparent", Some(header)),
    ];
    let spans = exported(|| {
        let span = record_span(&headers, "sync.submit", 3, 42);
        let _inside = span.enter();
        tracing::info_span!("inside").in_scope(|| {});
    });
    let record = named(&spans, "sync.record");
    assert_eq!(
        record.span_context.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(record.parent_span_id.to_string(), "00f067aa0ba902b7");
    let inside = named(&spans, "inside");
    assert_eq!(
        inside.span_context.trace_id(),
        record.span_context.trace_id()
    );
    assert_eq!(inside.parent_span_id, record.span_context.span_id());
}

#[test]
fn without_a_valid_traceparent_the_record_starts_its_own_trace() {
    for headers in [vec![], vec![("traceparent", Some(&b"garbage"[..]))]] {
        let spans = exported(|| {
            let span = record_span(&headers, "sync.submit", 0, 1);
            let _inside = span.enter();
        });
        let record = named(&spans, "sync.record");
        assert_eq!(record.parent_span_id, opentelemetry::trace::SpanId::INVALID);
        assert!(record.span_context.is_valid());
    }
}
