#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for kafka-mesh: system packages (librdkafka headers, etcd, a JDK, Maven),
# the Python package with its test extra, and the Kafka broker jars. Safe to run again: it installs only what is
# missing. Needs root (or sudo) for the system packages.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v pkg-config >/dev/null || missing+=(pkg-config)
pkg-config --exists rdkafka 2>/dev/null || missing+=(librdkafka-dev)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v gcc >/dev/null || missing+=(gcc)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The build links the librdkafka of the pinned confluent-kafka wheel (setup.py): it must be installed first.
build_requires=$(python3 -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
python3 -m pip install -q --upgrade "pip>=23" $build_requires
python3 -m pip install -q --no-build-isolation -e ".[test]"
kafka-mesh dev fetch >/dev/null
echo "setup: done ($(python3 -c 'import meshcore; print("librdkafka", meshcore.librdkafka_version(), "from", meshcore.LIBRDKAFKA_SOURCE)'))"
