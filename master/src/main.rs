//! `drover`: the master binary (placeholder).

fn main() -> std::process::ExitCode {
    if std::env::args().any(|a| a == "--version") {
        println!("drover {}", env!("CARGO_PKG_VERSION"));
        return std::process::ExitCode::SUCCESS;
    }
    eprintln!("{}", drover_master::PLACEHOLDER);
    std::process::ExitCode::from(2)
}
