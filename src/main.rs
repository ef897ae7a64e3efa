//! The `flowspect` binary: the desktop app (no arguments, or `flowspect gui`) and the
//! command line, both thin layers over the library.
mod cli;
mod gui;

fn main() {
    if let Err(e) = cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
