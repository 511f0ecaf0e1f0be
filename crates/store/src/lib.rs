//! I/O adapters: PostgreSQL (sqlx), the Redis queue and object storage. Filled by the service issue.
