//! The `chronicle` binary.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    chronicle::cli::main().await
}
