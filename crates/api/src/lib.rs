//! The HTTP API (axum). Filled by the service issue.
