# The stores the service and its tests use, as these machines run them. Source it (after
# scripts/env.sh): PostgreSQL and Redis URLs (defaults unless already set), and Garage (S3),
# installed once into a fixed prefix and started if not running, with AWS_* exported.
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
source scripts/garage.sh
