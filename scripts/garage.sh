#!/usr/bin/env bash
# Garage, a real S3 server, on one node for the tests and the README's service. Source it:
#   source scripts/garage.sh
# It installs garage once into a fixed prefix (about 8 minutes on 2 cores), starts it if port
# 3900 is not already served, sets up its layout, a bucket and a key (once; kept under
# $GARAGE_DATA), and exports the AWS_* variables object_store reads, plus NEURODIFF_OBJECT_STORE.
# Running it again reuses everything.
GARAGE_VERSION=2.5.0
GARAGE_ROOT=${GARAGE_ROOT:-$HOME/.cache/neurodiff/garage}
GARAGE_DATA=${GARAGE_DATA:-$HOME/.cache/neurodiff/garage-data}
GARAGE_BUCKET=${GARAGE_BUCKET:-neurodiff}
GARAGE=$GARAGE_ROOT/bin/garage

_nd_garage_setup() {
    set -e
    if ! "$GARAGE" --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
        echo "installing garage $GARAGE_VERSION into $GARAGE_ROOT (once; about 8 minutes)" >&2
        cargo install garage --version "$GARAGE_VERSION" --locked --root "$GARAGE_ROOT" >&2
    fi
    mkdir -p "$GARAGE_DATA/meta" "$GARAGE_DATA/data"
    local config=$GARAGE_DATA/garage.toml
    if [ ! -f "$config" ]; then
        cat > "$config" <<TOML
metadata_dir = "$GARAGE_DATA/meta"
data_dir = "$GARAGE_DATA/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "$(openssl rand -hex 32 2>/dev/null || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
api_bind_addr = "127.0.0.1:3900"
s3_region = "garage"
root_domain = ".s3.garage.localhost"
TOML
        chmod 600 "$config"
    fi
    local g="$GARAGE -c $config"
    if ! (exec 3<>/dev/tcp/127.0.0.1/3900) 2>/dev/null; then
        nohup $g server > "$GARAGE_DATA/garage.log" 2>&1 &
        for _ in $(seq 1 100); do
            $g status > /dev/null 2>&1 && break
            sleep 0.2
        done
    fi
    if $g status 2>/dev/null | grep -q "NO ROLE ASSIGNED"; then
        local node
        node=$($g node id -q 2>/dev/null | cut -d@ -f1)
        $g layout assign -z dc1 -c 1G "$node" > /dev/null
        $g layout apply --version 1 > /dev/null
    fi
    if ! $g bucket info "$GARAGE_BUCKET" > /dev/null 2>&1; then
        $g bucket create "$GARAGE_BUCKET" > /dev/null
    fi
    local keyfile=$GARAGE_DATA/key.env
    # A key file without an id (a setup that failed half-way) is made again.
    if ! grep -q '^AWS_ACCESS_KEY_ID=.' "$keyfile" 2>/dev/null; then
        local out
        out=$($g key create neurodiff-key)
        {
            echo "AWS_ACCESS_KEY_ID=$(echo "$out" | awk '/Key ID:/ {print $3}')"
            echo "AWS_SECRET_ACCESS_KEY=$(echo "$out" | awk '/Secret key:/ {print $3}')"
        } > "$keyfile"
        chmod 600 "$keyfile"
    fi
    # shellcheck disable=SC1090
    . "$keyfile"
    $g bucket allow --read --write --owner "$GARAGE_BUCKET" --key "$AWS_ACCESS_KEY_ID" > /dev/null
}

if ( _nd_garage_setup ); then
    # shellcheck disable=SC1090
    . "$GARAGE_DATA/key.env"
    export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
    export AWS_ENDPOINT_URL=http://127.0.0.1:3900 AWS_REGION=garage AWS_ALLOW_HTTP=true
    export NEURODIFF_OBJECT_STORE=${NEURODIFF_OBJECT_STORE:-s3://$GARAGE_BUCKET}
else
    echo "garage setup failed; see $GARAGE_DATA/garage.log" >&2
    return 1 2>/dev/null || exit 1
fi
