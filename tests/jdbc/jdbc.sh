#!/usr/bin/env bash
# Runs JdbcCheck.java (a JDBC client of astroflight's Flight SQL service) with Apache Arrow's
# Flight SQL JDBC driver from Maven Central (resolved once and cached in target/jdbc/ by
# tests/maven_classpath.sh).
#   bash tests/jdbc/jdbc.sh <host:port> <objectId>
#   bash tests/jdbc/jdbc.sh auth <host:port> <url parameters>
#   bash tests/jdbc/jdbc.sh --classpath-only
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cp_file="$(bash "$here/../maven_classpath.sh" "$here/pom.xml" jdbc)"
if [ "${1:-}" = "--classpath-only" ]; then
  exit 0
fi
# Arrow's Java memory needs java.nio opened on Java 17.
exec java -Xmx512m --add-opens=java.base/java.nio=ALL-UNNAMED \
  -cp "$(cat "$cp_file")" "$here/JdbcCheck.java" "$@"
