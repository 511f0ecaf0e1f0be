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
/// second and only when it changed, for a caller that shows its own bar.
pub fn progress_bar(quiet: bool, template: &str) -> indicatif::ProgressBar {
    let json = std::env::var("NEURODIFF_PROGRESS").is_ok_and(|v| v == "jsonl");
    let bar = if quiet || json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if json && !quiet {
        let watched = bar.clone();
        std::thread::spawn(move || report_progress(&watched));
    }
    bar
}

/// Writes the bar's state as JSON lines until it is finished (or the process exits); the state
/// it finished in is always written, so a short run still reports its total.
fn report_progress(bar: &indicatif::ProgressBar) {
    let mut last = None;
    loop {
        let finished = bar.is_finished();
        let now = (bar.position(), bar.length().unwrap_or(0), bar.message());
        if last.as_ref() != Some(&now) {
            let line = serde_json::json!({"progress": {"pos": now.0, "len": now.1, "msg": now.2}});
            eprintln!("{line}");
            last = Some(now);
        }
        if finished {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
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
