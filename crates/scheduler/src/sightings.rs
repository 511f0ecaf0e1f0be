//! Which checkpoints a scan has seen, and since when with the same content: a checkpoint is
//! audited only once its content has settled.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Checkpoints still settling, more than this and the oldest sightings are forgotten (they
/// wait one more poll).
const MAX_SIGHTINGS: usize = 100_000;

/// The content id each unaudited checkpoint had when this process first saw it so. In memory
/// and on the monotonic clock: a restarted scheduler waits one more poll, and no clock change
/// makes a checkpoint settle early.
#[derive(Debug, Default)]
pub struct Sightings(Mutex<HashMap<(Uuid, String), (String, Instant)>>);

impl Sightings {
    /// Whether `location` has had content `id` for at least `settle`, as this process's polls
    /// saw it; records the sighting when it is new or the content changed.
    pub fn settled(
        &self,
        scan: Uuid,
        location: &str,
        id: &str,
        now: Instant,
        settle: Duration,
    ) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (scan, location.to_string());
        if let Some((was, since)) = seen.get(&key) {
            if was == id {
                return now.saturating_duration_since(*since) >= settle;
            }
        }
        if seen.len() >= MAX_SIGHTINGS {
            seen.clear();
        }
        seen.insert(key, (id.to_string(), now));
        false
    }

    /// Forgets a checkpoint once it is recorded.
    pub fn forget(&self, scan: Uuid, location: &str) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.remove(&(scan, location.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_settles_once_two_polls_apart_saw_the_same_content() {
        let seen = Sightings::default();
        let scan = Uuid::new_v4();
        let settle = Duration::from_secs(30);
        let t0 = Instant::now();
        // The weights are complete; the tokenizer is not written yet.
        assert!(!seen.settled(scan, "step-1", "id-weights", t0, settle));
        assert!(!seen.settled(
            scan,
            "step-1",
            "id-weights",
            t0 + Duration::from_secs(10),
            settle
        ));
        // The tokenizer lands: another id, the wait starts again.
        let t1 = t0 + Duration::from_secs(20);
        assert!(!seen.settled(scan, "step-1", "id-full", t1, settle));
        assert!(!seen.settled(
            scan,
            "step-1",
            "id-full",
            t0 + Duration::from_secs(45),
            settle
        ));
        assert!(seen.settled(scan, "step-1", "id-full", t1 + settle, settle));
        // Another scan watching the same place waits for itself.
        assert!(!seen.settled(Uuid::new_v4(), "step-1", "id-full", t1 + settle, settle));
        // With no settle time, the second poll is enough.
        assert!(!seen.settled(scan, "step-2", "x", t0, Duration::ZERO));
        assert!(seen.settled(scan, "step-2", "x", t0, Duration::ZERO));
        seen.forget(scan, "step-2");
        assert!(!seen.settled(scan, "step-2", "x", t0, Duration::ZERO));
    }
}
