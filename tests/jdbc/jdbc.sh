#!/usr/bin/env bash
# Runs JdbcCheck.java (a JDBC client of astroflight's Flight SQL service) with Apache Arrow's
# Flight SQL JDBC driver from Maven Central. The classpath is resolved once (mvn
# dependency:build-classpath) and cached in target/jdbc/, keyed by the pom's checksum.
#   bash tests/jdbc/jdbc.sh <host:port> <objectId>
#   bash tests/jdbc/jdbc.sh --classpath-only
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="$repo/target/jdbc"
mkdir -p "$cache"
key="$(sha256sum "$here/pom.xml" | cut -c1-16)"
cp_file="$cache/classpath-$key.txt"
# Java 17 and Maven come from Debian when missing (as root, with apt); otherwise say so and fail.
if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "jdbc: installing openjdk-17-jdk-headless and maven from Debian" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless maven >&2
  fi
fi
if [ ! -s "$cp_file" ]; then
  command -v mvn >/dev/null || { echo "jdbc: maven (mvn) is required to fetch the JDBC driver" >&2; exit 1; }
  mvn -B -q -f "$here/pom.xml" dependency:build-classpath -Dmdep.outputFile="$cp_file.tmp" >&2
  mv "$cp_file.tmp" "$cp_file"
fi
if [ "${1:-}" = "--classpath-only" ]; then
  exit 0
fi
# Arrow's Java memory needs java.nio opened on Java 17.
exec java -Xmx512m --add-opens=java.base/java.nio=ALL-UNNAMED \
  -cp "$(cat "$cp_file")" "$here/JdbcCheck.java" "$@"
