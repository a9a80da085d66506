//! Logging through `tracing`, as text or JSON.

use crate::cli::{LogFormat, ServeArgs};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The filter does not parse.
    #[error("invalid --log-level {0:?}: {1}")]
    Filter(String, String),
}

/// Installs the global subscriber; `RUST_LOG`, when set, overrides `--log-level`.
pub fn init(args: &ServeArgs) -> Result<(), LoggingError> {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| args.log_level.clone());
    let filter = EnvFilter::try_new(&directives)
        .map_err(|e| LoggingError::Filter(directives.clone(), e.to_string()))?;
    // Colour only for a person at a terminal: a file, a pipe or a log collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    Ok(())
}
