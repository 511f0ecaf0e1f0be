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

/// A progress bar on stderr drawn with `template` (indicatif's syntax), or a hidden one.
pub fn progress_bar(quiet: bool, template: &str) -> indicatif::ProgressBar {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
