//! Plans audits into shards, reclaims dead shards, fans results in, runs scheduled scans. Filled by the service issue.
