//! Where the binary's logs go: stderr, as text (the default) or as JSON lines for log shippers
//! (`--log-format json`, or `SYNC_ENGINE_LOG_FORMAT=json`), filtered by `RUST_LOG` (default
//! `info`) until a pipeline file's `log_level` replaces it (at start and on hot reload). Spans also go to an OTLP/HTTP collector when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! (e.g. `http://127.0.0.1:4318`). While a progress bar is on screen, each log line is printed
//! above it rather than through it.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use indicatif::ProgressBar;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields at the top level, the current span in `span` and its parents in `spans`.
    Json,
}

/// stderr, with the progress bar (if one is shown) cleared while a line is written.
#[derive(Clone, Default)]
pub struct LogWriter {
    bar: Arc<Mutex<Option<ProgressBar>>>,
}

impl LogWriter {
    /// Log lines go above `bar` until it is finished.
    pub fn above(&self, bar: &ProgressBar) {
        *self.bar.lock().expect("log writer lock") = Some(bar.clone());
    }
}

/// One log line on its way to stderr.
pub struct LogLine(Option<ProgressBar>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.0 {
            Some(bar) if !bar.is_finished() => bar.suspend(|| io::stderr().write_all(buf))?,
            _ => io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(self.bar.lock().expect("log writer lock").clone())
    }
}

/// Installs the subscriber; returns the OTLP provider (to flush at exit) if there is one, and
/// the writer that progress bars register with.
pub fn init(format: LogFormat) -> anyhow::Result<(Option<SdkTracerProvider>, LogWriter)> {
    let writer = LogWriter::default();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // the pipeline file's `log_level` replaces the filter at start and on every reload
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    sync_engine::sidecar::reload::set_log_filter(Box::new(move |directive| {
        let filter =
            tracing_subscriber::EnvFilter::try_new(directive).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }));
    let text = (format == LogFormat::Text).then(|| {
        // colours only for a terminal: a file or a log shipper gets plain text; a non-empty
        // NO_COLOR (https://no-color.org, set in the container image) turns them off anyway
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        tracing_subscriber::fmt::layer()
            .with_ansi(!no_color && io::IsTerminal::is_terminal(&io::stderr()))
            .with_writer(writer.clone())
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer.clone())
    });
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json);
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        registry.init();
        return Ok((None, writer));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .context("OTLP exporter (OTEL_EXPORTER_OTLP_ENDPOINT)")?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer("sync-engine");
    registry
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .init();
    Ok((Some(provider), writer))
}
