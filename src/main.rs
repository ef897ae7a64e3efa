//! The `flowspect` binary: the command line (and, later, the GUI) over the library.
mod cli;

fn main() {
    if let Err(e) = cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
