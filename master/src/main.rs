//! `drover ["master://HOST:PORT/PREFIX?params"]`: parse argv, run the master.

use std::process::ExitCode;

use drover_master::config::{Config, DEFAULT_URL};

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = match args.as_slice() {
        [] => DEFAULT_URL.to_string(),
        [flag] if flag == "--version" || flag == "-V" => {
            println!("drover {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        [url] if !url.starts_with('-') => url.clone(),
        _ => {
            eprintln!(
                "drover: usage: drover [\"master://HOST:PORT/PREFIX?log=info&tls=0|1|2&crt=…&key=…\"] | --version"
            );
            return ExitCode::from(2);
        }
    };
    let cfg = match Config::parse(&url) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drover: invalid master url: {e}");
            return ExitCode::from(2);
        }
    };
    drover_master::logging::init(cfg.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(drover_master::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("drover: {e:#}");
            ExitCode::FAILURE
        }
    }
}
