#!/usr/bin/env bash
# Runs the MiniDFSCluster launcher (MiniHdfs.java) with Hadoop's jars from Maven Central.
# The classpath is resolved once (mvn dependency:build-classpath; ~125 MB into ~/.m2 on a cold
# machine) and cached in target/minihdfs/, keyed by the pom's checksum.
#   bash tests/hdfs/minihdfs.sh <base dir> <datanodes> <replication>
#   bash tests/hdfs/minihdfs.sh --classpath-only
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="$repo/target/minihdfs"
mkdir -p "$cache"
key="$(sha256sum "$here/pom.xml" | cut -c1-16)"
cp_file="$cache/classpath-$key.txt"
# Java 17 and Maven come from Debian when missing (as root, with apt); otherwise say so and fail.
if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "minihdfs: installing openjdk-17-jdk-headless and maven from Debian" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless maven >&2
  fi
fi
if [ ! -s "$cp_file" ]; then
  command -v mvn >/dev/null || { echo "minihdfs: maven (mvn) is required to fetch Hadoop's jars" >&2; exit 1; }
  command -v java >/dev/null || { echo "minihdfs: java is required to run MiniDFSCluster" >&2; exit 1; }
  mvn -B -q -f "$here/pom.xml" dependency:build-classpath -Dmdep.outputFile="$cp_file.tmp" >&2
  mv "$cp_file.tmp" "$cp_file"
fi
if [ "${1:-}" = "--classpath-only" ]; then
  exit 0
fi
exec java -Xmx1g -Dlog4j.configuration="file:$here/log4j.properties" \
  -cp "$(cat "$cp_file")" "$here/MiniHdfs.java" "$@"
