//! `drover-worker "<url>"` (standalone) or `drover-worker --instance <id>
//! [--control-fd N]` (started by the master): parse argv, hand over.

use std::process::ExitCode;

const USAGE: &str = "usage: drover-worker \"server://[KEY@]HOST:PORT/TARGET?params\" | \"client://…\" \
                     | --instance <id> [--control-fd 3] | --spare [--control-fd 3] | --version";

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--version" | "-V"] => {
            println!("drover-worker {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["--instance", id] => drover_worker::supervised::run(id.to_string(), 3),
        ["--spare"] => drover_worker::spare::run(3),
        ["--spare", "--control-fd", fd] => match fd.parse() {
            Ok(fd) if fd > 2 => drover_worker::spare::run(fd),
            _ => usage(),
        },
        ["--instance", id, "--control-fd", fd] => match fd.parse() {
            Ok(fd) if fd > 2 => drover_worker::supervised::run(id.to_string(), fd),
            _ => usage(),
        },
        [url] if !url.starts_with('-') => match drover_worker::standalone::parse(url) {
            Ok(spec) => drover_worker::standalone::run(spec),
            Err(e) => {
                eprintln!("drover-worker: {e}");
                ExitCode::from(2)
            }
        },
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!("drover-worker: {USAGE}");
    ExitCode::from(2)
}
