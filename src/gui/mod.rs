//! The desktop app (eframe/egui), a thin layer over the `flowspect` library: the worker
//! thread runs the library's jobs, the panels draw plain state.
//!
//! One file a piece: `app` (state, polling, frame loop), `worker` (training, scoring,
//! model files), `loader` (image decoding), `dialogs` (native file dialogs), `project` (the `.fsproj` file), and one
//! file per tab: `data_panel`, `train_panel`, `threshold_panel`, `review`, `inspect_panel`
//! (line mode; its engine thread is `inspect_worker`).
mod app;
mod data_panel;
mod dialogs;
mod inspect_panel;
mod inspect_worker;
mod loader;
mod project;
mod review;
mod state;
mod threshold_panel;
mod train_panel;
mod worker;
#[cfg(test)]
mod tests;

pub use app::{App, Startup};
pub use state::Tab;

/// Opens the window and runs until it is closed.
pub fn run(startup: Startup) -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("flowspect")
            .with_inner_size([1400.0, 900.0])
            .with_min_inner_size([800.0, 560.0]),
        persist_window: true,
        ..Default::default()
    };
    eframe::run_native("flowspect", options, Box::new(move |cc| Ok(Box::new(App::new(cc, startup)))))
        .map_err(|e| anyhow::anyhow!("cannot open the window: {e} (no display? `flowspect --help` lists the command-line tools)"))
}
