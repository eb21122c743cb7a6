"""Train and export a tiny student (seconds, CPU) for the torch-free runtime check: `python .ci/tiny_export.py DIR`."""
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distill.cli import main  # noqa: E402
from tests.conftest import tiny_config_dict  # noqa: E402

root = Path(sys.argv[1]).resolve()
config = tiny_config_dict(root / "run", root / "data")
config["student"] = {**config["student"], "train": {**config["student"]["train"], "epochs": 1}}
root.mkdir(parents=True, exist_ok=True)
(root / "tiny.yaml").write_text(yaml.safe_dump(config))
for args in (["data"], ["distill", "--variant", "baseline"], ["export", "--student", str(root / "run/students/baseline-seed0")]):
    if main([args[0], str(root / "tiny.yaml"), *args[1:]]) != 0:
        sys.exit(f"tiny export failed at `{' '.join(args)}`")
