//! Pulls layer shards from the queue and runs the core analyses. Filled by the service issue.
