#!/usr/bin/env bash
# Regenerates delidev/connect/gen from proto/ with the pinned plugins (see pyproject dev extras).
# Usage: bash proto/generate.sh [OUT_DIR]   (default: delidev/connect/gen)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/delidev/connect/gen}
bin=$(dirname "$(command -v python)")
rm -rf "$out"
mkdir -p "$out"
cd "$root/proto"
python -m grpc_tools.protoc -I . \
  --plugin=protoc-gen-py="$bin/protoc-gen-py" \
  --plugin=protoc-gen-connectrpc="$bin/protoc-gen-connectrpc" \
  --py_out="$out" --connectrpc_out="$out" \
  delidev/v1/*.proto
