#!/usr/bin/env bash
# The quick start's main job: a sandbox of three Kafka clusters and etcd, a mapping, the sidecar, and records
# produced through it with the Python client. Leaves the sandbox and the sidecar running; says how to stop them.
set -euo pipefail
cd "$(dirname "$0")/.."
state="${KAFKA_MESH_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/kafka-mesh/sandbox}"

etcd=$(kafka-mesh dev up --clusters 3 --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["etcd"]["endpoint"])')
echo "demo: sandbox up; etcd at $etcd"

mapping=$(mktemp --suffix .json)
cat > "$mapping" <<'JSON'
{
  "producer": {
    "orders": {"where": [{"sink": "c1"}]},
    "audit": {"where": [{"sink": "c2"}, {"sink": "c3"}]},
    "__default__": {"where": [{"sink": "c2"}]}
  }
}
JSON
kafka-mesh mapping apply "$mapping" --etcd "$etcd"

socket="$state/sidecar.sock"
kafka-mesh sidecar --etcd "$etcd" --listen "unix:$socket" --cache-dir "$state/sidecar-cache" \
  >"$state/sidecar.log" 2>&1 &
pid=$!
echo "$pid" >"$state/sidecar.pid"
python3 - "$socket" "$pid" <<'PY'
import os, sys, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
sock, pid = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 30
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("demo: the sidecar exited; see its log")
    try:
        with grpc.insecure_channel(f"unix:{sock}") as ch:
            if health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                sys.exit(0)
    except grpc.RpcError:
        time.sleep(0.2)
sys.exit("demo: the sidecar did not become ready in 30 s")
PY
echo "demo: sidecar $pid serving on unix:$socket (log: $state/sidecar.log)"

python3 examples/produce.py --target "unix:$socket" --topic orders --count 5
echo
echo "demo: done. Stop with: kill \$(cat $state/sidecar.pid); kafka-mesh dev down"
