#!/usr/bin/env bash
# The exported student must run where torch is not installed: export a tiny student with the project's
# venv, then search it from a fresh venv that has only the runtime's requirements, and compare.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python .ci/tiny_export.py "$work/tiny"
export_dir="$work/tiny/run/export"
gallery="$work/tiny/data/images"
search=(search "$export_dir" --gallery "$gallery" --query "a red circle" --query "a small blue square" -k 5 --json)
.venv/bin/itr-distill "${search[@]}" --variant int8 > "$work/with_torch.json"

$PYTHON -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q -r requirements/runtime.txt
"$work/venv/bin/python" -m pip install -q --no-deps .
if "$work/venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "runtime check: torch is importable in the runtime venv" >&2; exit 1
fi
cd "$work"  # the installed package, not the checkout
"$work/venv/bin/itr-distill" "${search[@]}" --variant int8 > "$work/without_torch.json"
"$work/venv/bin/python" - "$work/with_torch.json" "$work/without_torch.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
ids = lambda r: [[h["id"] for h in q["hits"]] for q in r]
assert ids(a) == ids(b), (ids(a), ids(b))
worst = max(abs(x["score"] - y["score"]) for qa, qb in zip(a, b) for x, y in zip(qa["hits"], qb["hits"]))
assert worst < 1e-5, worst
print(f"runtime without torch: {len(b)} queries, same top-5 as with torch (max score difference {worst:.1e})")
PY
