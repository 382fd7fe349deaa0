#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for kafka-mesh: system packages (librdkafka headers, etcd, a JDK, Maven, Node,
# Go), the Python package with its test extra, the Kafka broker jars, buf and grpcurl (into .tools/), and what the
# examples in other languages need (their packages, the Go stubs). Safe to run again: it installs only what is
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
# The examples in other languages (tests/integration/test_examples.py) and the tools built from Go modules.
command -v javac >/dev/null || missing+=(openjdk-17-jdk-headless)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v go >/dev/null || missing+=(golang-go)
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
# The Node example's packages (pinned in its package.json), which the tests run it with.
if [ ! -d examples/node/node_modules/@grpc/grpc-js ]; then
  command -v npm >/dev/null || { echo "setup: npm is needed (apt-get install nodejs npm)"; exit 1; }
  npm install --silent --no-audit --no-fund --no-package-lock --prefix examples/node >/dev/null
fi
# buf (lints proto/ in `make lint`), from npm into .tools/, pinned.
BUF_VERSION=1.75.0
if [ "$(.tools/node_modules/.bin/buf --version 2>/dev/null)" != "$BUF_VERSION" ]; then
  command -v npm >/dev/null || { echo "setup: npm is needed for buf (apt-get install npm)"; exit 1; }
  mkdir -p .tools
  npm install --silent --no-audit --no-fund --prefix .tools "@bufbuild/buf@$BUF_VERSION" >/dev/null
fi
# The Go example's stubs, generated from proto/ by buf with protoc-gen-go and protoc-gen-go-grpc (pinned, built into
# .tools/bin), and its modules fetched and built once so that the test's build is quick.
if command -v go >/dev/null; then
  mkdir -p .tools/bin
  [ -x .tools/bin/protoc-gen-go ] || GOBIN="$PWD/.tools/bin" go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
  [ -x .tools/bin/protoc-gen-go-grpc ] || GOBIN="$PWD/.tools/bin" go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
  # grpcurl: the test of README's grpcurl lines runs it.
  [ -x .tools/bin/grpcurl ] || GOBIN="$PWD/.tools/bin" go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
  PATH="$PWD/.tools/bin:$PATH" .tools/node_modules/.bin/buf generate --template examples/go/buf.gen.yaml
  (cd examples/go && go build -o ../../.tools/bin/kafka-mesh-example-go .)
else
  echo "setup: no Go toolchain: the Go example's test will fail"
fi
# The wheels of the Python client's dependencies (the versions installed here), from which the test of the client
# alone installs a fresh virtual environment offline.
python3 -m pip download -q -d .tools/wheels $(python3 -c 'import grpc, google.protobuf as p; print(f"grpcio=={grpc.__version__} protobuf=={p.__version__}")')
# The Java example: the Maven protobuf plugin, protoc, protoc-gen-grpc-java and the dependencies fetched once (the
# test builds it offline).
(cd examples/java && mvn -q package -DskipTests >/dev/null)
echo "setup: done ($(python3 -c 'import meshcore; print("librdkafka", meshcore.librdkafka_version(), "from", meshcore.LIBRDKAFKA_SOURCE)'))"
