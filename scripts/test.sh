#!/usr/bin/env bash
# Runs every Sluice test: unit and integration tests, the sqllogictest suites over pgwire
# (against Sluice, and the PostgreSQL-compatible ones against a real PostgreSQL as well), and the
# driver tests (psycopg, asyncpg, pgjdbc), and the Kafka tests against a real broker. Installs
# what it needs when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# RocksDB's bindings are generated at build time by bindgen, which needs libclang.
if ! command -v clang >/dev/null || ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
  echo "installing clang and libclang-dev (Debian packages) to build RocksDB"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libclang-dev >/dev/null
fi

# PostgreSQL server binaries: the reference the PostgreSQL-compatible suites are compared with.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "installing PostgreSQL (Debian package) for the reference runs"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

# The JDBC driver (and a JDK to run the check) for the client tests.
if [ ! -f /usr/share/java/postgresql.jar ] || ! command -v java >/dev/null; then
  echo "installing the PostgreSQL JDBC driver (Debian package)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpostgresql-jdbc-java default-jdk-headless >/dev/null
fi

# Python drivers for the client tests, DuckDB (reads the history files as a second opinion)
# and moto's S3-compatible server (the history store of the S3 test, on loopback).
if ! python3 -c 'import psycopg, asyncpg, duckdb, moto.server, flask' 2>/dev/null; then
  echo "installing psycopg, asyncpg, duckdb and moto[server] (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check 'psycopg[binary]>=3.1' 'asyncpg>=0.29' 'duckdb>=1.1' 'moto[server]>=5'
fi

# The Kafka-API broker the Kafka tests start on loopback: tansu, in-memory (see
# ../shared/kafka-broker.md). Built once (about 20 minutes on 2 cores) and cached outside the clone.
TANSU_ROOT="${TANSU_ROOT:-$HOME/.cache/tansu-0.6.0}"
if [ ! -x "$TANSU_ROOT/bin/tansu" ]; then
  echo "installing the tansu Kafka broker (cargo install tansu@0.6.0, once)"
  cargo install tansu@0.6.0 --locked --features dynostore --root "$TANSU_ROOT"
fi
export TANSU_BIN="$TANSU_ROOT/bin/tansu"

export SLUICE_REQUIRE_POSTGRES=1 SLUICE_REQUIRE_CLIENTS=1 SLUICE_REQUIRE_KAFKA=1 SLUICE_REQUIRE_S3=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run: cargo's per-binary lines, plus the slt runner's.
awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  /^slt: [0-9]+ passed, [0-9]+ failed/ { p += $2; f += $4 }
  END { printf "all tests: %d passed, %d failed\n", p, f }
' "$log"
exit "$status"
