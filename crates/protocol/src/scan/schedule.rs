//! A scan's schedule: a period, or a five-field cron expression, and when it fires next.
use chrono::{DateTime, Utc};

use super::{field, MAX_EVERY_S, MIN_EVERY_S};
use crate::error::SpecError;

/// A scan's schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Every(u64),
    Cron(Box<croner::Cron>),
}

impl Schedule {
    pub fn parse(every_s: Option<u64>, cron: Option<&str>) -> Result<Schedule, SpecError> {
        match (every_s, cron) {
            (Some(s), None) if (MIN_EVERY_S..=MAX_EVERY_S).contains(&s) => Ok(Schedule::Every(s)),
            (Some(_), None) => Err(field(
                "every_s",
                format!("{MIN_EVERY_S} to {MAX_EVERY_S} seconds"),
            )),
            (None, Some(c)) => {
                // Five fields as crontab(5) has them (nicknames such as `@daily` too): croner
                // would also take seconds and years, which a scan has no use for.
                let parser = croner::parser::CronParser::builder()
                    .seconds(croner::parser::Seconds::Disallowed)
                    .year(croner::parser::Year::Disallowed)
                    .build();
                let cron = parser.parse(c).map_err(|e| {
                    field(
                        "cron",
                        format!("`{c}`: {e} (five fields: minute hour day month weekday)"),
                    )
                })?;
                if cron.find_next_occurrence(&Utc::now(), false).is_err() {
                    return Err(field("cron", format!("`{c}` never fires")));
                }
                Ok(Schedule::Cron(Box::new(cron)))
            }
            (Some(_), Some(_)) => Err(field("every_s` and `cron", "give one, not both")),
            (None, None) => Err(field("every_s` or `cron", "a scan needs a schedule")),
        }
    }

    /// The first run strictly after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Schedule::Every(s) => now + chrono::Duration::seconds(*s as i64),
            Schedule::Cron(c) => c
                .find_next_occurrence(&now, false)
                .unwrap_or(now + chrono::Duration::days(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::scan::tests::refusal;
    use crate::scan::ScanRequest;
    use serde_json::json;

    #[test]
    fn cron_takes_five_fields_and_must_fire() {
        let mut r: ScanRequest = serde_json::from_value(json!({
            "name": "n", "source": "/data/ckpts", "base": "/data/base", "cron": "0 3 * * *"
        }))
        .expect("request");
        assert!(r.validate().is_ok());
        r.cron = Some("@daily".into());
        assert!(r.validate().is_ok());
        for bad in ["*/5 * * * * *", "0 3 * * * 2030", "0 0 31 2 *"] {
            r.cron = Some(bad.into());
            assert!(refusal(&r).contains("cron"), "{bad}");
        }
    }
}
