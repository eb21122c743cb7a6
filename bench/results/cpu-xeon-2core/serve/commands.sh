#!/usr/bin/env bash
# The load test of `itr-distill serve` (serve_load.json / serve_load.md) and the README's screenshot
# (docs/serve.png), over the demo export (`itr-distill demo` first). Run from the repository root with
# nothing else busy: the server and the load generator share the machine's cores.
set -euo pipefail
out=bench/results/cpu-xeon-2core/serve
captions=runs/serve/demo_test_captions.txt
mkdir -p runs/serve
# The caption gallery: the demo's 1,000 test captions (also the load test's queries, taken in turn).
.venv/bin/python -c "import json; d = json.load(open('runs/demo/data/dataset_synthetic.json'));
print('\n'.join(s['raw'] for im in d['images'] if im['split'] == 'test' for s in im['sentences']))" > "$captions"
.venv/bin/itr-distill serve runs/demo/export --gallery runs/demo/data/images --captions "$captions" --port 8765 &
server=$!
trap 'kill $server' EXIT
until curl -sf http://127.0.0.1:8765/api/info >/dev/null; do kill -0 $server; sleep 1; done  # stops here if the server did not start
.venv/bin/python -m export.runtime.load_test http://127.0.0.1:8765 --requests 2000 --threads 8 --queries "$captions" --out "$out"
.venv/bin/python -m tests.export.browser http://127.0.0.1:8765 --query "a red circle above a blue square" -k 8 \
  --image runs/demo/data/images/test_00001.png --out docs/serve.png
