//! One module per subcommand.
pub mod audit;
pub mod bench_dictionary;
pub mod client;
pub mod grade;
pub mod inspect;
pub mod organisms;
pub mod scan;
pub mod scope;
pub mod task_vector;
pub mod worker;

/// A progress bar on stderr drawn with `template` (indicatif's syntax), or a hidden one. With
/// `NEURODIFF_PROGRESS=jsonl` (the Python package sets it) the bar is not drawn; its state is
/// written to stderr as `{"progress": {"pos", "len", "msg"}}` lines instead, at most twice a
/// second and only when it changed, and once more when it finishes (`finish`), for a caller that
/// shows its own bar (`--quiet` does not silence them: the caller asked for them).
pub fn progress_bar(quiet: bool, template: &str) -> indicatif::ProgressBar {
    let json = json_progress();
    let bar = if quiet || json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if json {
        let watched = bar.clone();
        std::thread::spawn(move || report_progress(&watched));
    }
    bar
}

/// Whether progress goes to stderr as JSON lines (`NEURODIFF_PROGRESS=jsonl`).
fn json_progress() -> bool {
    std::env::var("NEURODIFF_PROGRESS").is_ok_and(|v| v == "jsonl")
}

/// One JSON line of the bar's state.
fn progress_line(bar: &indicatif::ProgressBar) -> String {
    let (pos, len, msg) = (bar.position(), bar.length().unwrap_or(0), bar.message());
    serde_json::json!({"progress": {"pos": pos, "len": len, "msg": msg}}).to_string()
}

/// Writes the bar's state as JSON lines, when it changed, until it is finished.
fn report_progress(bar: &indicatif::ProgressBar) {
    let mut last = String::new();
    while !bar.is_finished() {
        let line = progress_line(bar);
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Finishes and clears the bar; with JSON progress, its final state is written first, from this
/// thread, so a run shorter than the reporter's period still reports where it ended.
pub fn finish(bar: &indicatif::ProgressBar) {
    if json_progress() {
        eprintln!("{}", progress_line(bar));
    }
    bar.finish_and_clear();
}

/// `neurodiff openapi`: the API's OpenAPI document as served, pretty-printed.
pub fn openapi() -> anyhow::Result<()> {
    use std::io::Write;
    writeln!(
        std::io::stdout(),
        "{}",
        neurodiff_api::openapi::document_json()?
    )?;
    Ok(())
}
