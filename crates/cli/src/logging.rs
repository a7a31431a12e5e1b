//! The tracing subscriber: the library emits events, the binary decides
//! how they look. Levels from `RUST_LOG` (default `info`, `warn` with
//! `--quiet`), on stderr; human text (timestamps unless stderr is a
//! terminal) or one JSON object per line with `--log-format json`.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the subscriber for this process.
pub fn init(format: LogFormat, quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    // Our crates at the chosen level; libp2p's and the rest only warnings,
    // unless RUST_LOG says otherwise.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,libp2p_kad=error,statesync={default},statesync_node={default},statesync_engine={default},statesync_net={default}")));
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Text if terminal => builder.without_time().with_ansi(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}
