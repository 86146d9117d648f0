#!/usr/bin/env bash
# The classpath of a pom's dependencies from Maven Central, resolved once (mvn
# dependency:build-classpath) and cached in target/<name>/, keyed by the pom's checksum. Prints
# the path of the file holding it. Java 17 and Maven come from Debian when missing (as root, with
# apt); otherwise says so and fails. Used by tests/hdfs/minihdfs.sh and tests/jdbc/jdbc.sh.
#   bash tests/maven_classpath.sh <pom.xml> <name>
set -euo pipefail
pom="$1"
name="$2"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$repo/target/$name"
mkdir -p "$cache"
key="$(sha256sum "$pom" | cut -c1-16)"
cp_file="$cache/classpath-$key.txt"
if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "$name: installing openjdk-17-jdk-headless and maven from Debian" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless maven >&2
  fi
fi
command -v java >/dev/null || { echo "$name: java is required" >&2; exit 1; }
if [ ! -s "$cp_file" ]; then
  command -v mvn >/dev/null || { echo "$name: maven (mvn) is required to fetch the jars" >&2; exit 1; }
  mvn -B -q -f "$pom" dependency:build-classpath -Dmdep.outputFile="$cp_file.tmp" >&2
  mv "$cp_file.tmp" "$cp_file"
fi
echo "$cp_file"
