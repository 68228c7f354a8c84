//! `drover-worker "<url>"`: parse argv, hand over to the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag] if flag == "--version" || flag == "-V" => {
            println!("drover-worker {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        [url] if !url.starts_with('-') => match drover_worker::standalone::parse(url) {
            Ok(spec) => drover_worker::standalone::run(spec),
            Err(e) => {
                eprintln!("drover-worker: {e}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!(
                "drover-worker: usage: drover-worker \"server://[KEY@]HOST:PORT/TARGET?params\" | \"client://…\""
            );
            ExitCode::from(2)
        }
    }
}
