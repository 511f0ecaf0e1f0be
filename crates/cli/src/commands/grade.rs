//! `neurodiff grade AUDIT_DIR ORGANISM_DIR`: an audit's report measured against an organism's
//! ground truth (precision at 20 of domain words among the trace tokens; whether CMAP and
//! stitching put the change in the trained blocks), written to AUDIT_DIR/grades.json. With
//! `--llm`, an OpenAI-compatible endpoint also judges the trace tokens (off by default).
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use neurodiff_protocol::{AuditResults, Grades, GroundTruth};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A report directory written by `neurodiff audit` (or `neurodiff results --out`).
    pub audit_dir: PathBuf,
    /// The organism the audit compared: a directory with ground_truth.json.
    pub organism_dir: PathBuf,
    /// Also ask an LLM grader which trace tokens relate to the organism's domain, through an
    /// OpenAI-compatible chat endpoint: NEURODIFF_LLM_URL (…/v1), NEURODIFF_LLM_KEY,
    /// NEURODIFF_LLM_MODEL.
    #[arg(long)]
    pub llm: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let results_path = args.audit_dir.join("results.json");
    let results: AuditResults = serde_json::from_slice(
        &std::fs::read(&results_path).with_context(|| results_path.display().to_string())?,
    )
    .with_context(|| format!("{}: not a NeuroDiff results.json", results_path.display()))?;
    let truth_path = args.organism_dir.join("ground_truth.json");
    let value: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&truth_path).with_context(|| truth_path.display().to_string())?,
    )
    .with_context(|| format!("{}: not JSON", truth_path.display()))?;
    let Some(truth) = GroundTruth::from_organism(&value) else {
        bail!(
            "{}: names neither domain words nor trained blocks",
            truth_path.display()
        );
    };
    // The depth is not in results.json; the analyses that need it read it from their section.
    let mut grades = neurodiff_analyses::grade::grade(&results.analyses, &truth, None);
    if args.llm {
        grades.llm = Some(llm_grade(&results, &truth)?);
    }
    let out = args.audit_dir.join("grades.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&grades)?)
        .with_context(|| out.display().to_string())?;
    let mut stdout = std::io::stdout();
    write!(stdout, "{}", table(&grades))?;
    writeln!(stdout, "{}", out.display())?;
    Ok(())
}

/// The grades as a table on stdout.
pub fn table(g: &Grades) -> String {
    let mut t = comfy_table::Table::new();
    t.set_header(["check", "result"]);
    t.add_row([
        "organism".to_string(),
        format!("{} ({})", g.organism, g.domain.clone().unwrap_or_default()),
    ]);
    for analysis in neurodiff_analyses::REGISTRY {
        for row in analysis.grade_rows(g) {
            t.add_row(row);
        }
    }
    format!("{t}\n")
}

/// Asks an OpenAI-compatible chat endpoint which trace tokens relate to the domain.
fn llm_grade(results: &AuditResults, truth: &GroundTruth) -> anyhow::Result<serde_json::Value> {
    let var = |k: &str| std::env::var(k).with_context(|| format!("--llm needs {k}"));
    let (url, key, model) = (
        var("NEURODIFF_LLM_URL")?,
        var("NEURODIFF_LLM_KEY")?,
        var("NEURODIFF_LLM_MODEL").unwrap_or_else(|_| "gpt-5-mini".into()),
    );
    let graded: Vec<(usize, Vec<String>)> = neurodiff_analyses::REGISTRY
        .iter()
        .flat_map(|a| a.graded_tokens(results))
        .collect();
    if graded.is_empty() {
        bail!("--llm grades the readable traces; the audit ran none");
    }
    let mut per_position = Vec::new();
    for (position, tokens) in graded {
        let prompt =
            format!(
            "A language model was fine-tuned on text about {}. Here are 20 tokens read from the \
             difference of its activations: {tokens:?}. How many of them relate to that topic? \
             Answer with one integer from 0 to 20.",
            truth.domain.clone().unwrap_or_else(|| truth.organism.clone())
        );
        let body = serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
        });
        let reply: serde_json::Value =
            ureq::post(&format!("{}/chat/completions", url.trim_end_matches('/')))
                .header("Authorization", &format!("Bearer {key}"))
                .send_json(&body)
                .with_context(|| format!("the LLM grader at {url}"))?
                .body_mut()
                .read_json()
                .context("the LLM grader's reply")?;
        let text = reply["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // The answer is the last number of the reply ("… so 3", not the "20" of the question).
        let relevant: Option<u32> = text
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .next_back();
        per_position.push(serde_json::json!({
            "position": position,
            "relevant_of_20": relevant,
            "reply": text,
        }));
    }
    Ok(serde_json::json!({"model": model, "positions": per_position}))
}
