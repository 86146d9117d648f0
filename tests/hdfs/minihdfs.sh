#!/usr/bin/env bash
# Runs the MiniDFSCluster launcher (MiniHdfs.java) with Hadoop's jars from Maven Central.
# The classpath is resolved once (~125 MB into ~/.m2 on a cold machine) and cached in
# target/minihdfs/ by tests/maven_classpath.sh, keyed by the pom's checksum.
#   bash tests/hdfs/minihdfs.sh <base dir> <datanodes> <replication>
#   bash tests/hdfs/minihdfs.sh --classpath-only
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cp_file="$(bash "$here/../maven_classpath.sh" "$here/pom.xml" minihdfs)"
if [ "${1:-}" = "--classpath-only" ]; then
  exit 0
fi
exec java -Xmx1g -Dlog4j.configuration="file:$here/log4j.properties" \
  -cp "$(cat "$cp_file")" "$here/MiniHdfs.java" "$@"
