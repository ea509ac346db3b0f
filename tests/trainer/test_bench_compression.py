"""bench/vector_compression.py end to end on the quick zoo: it trains a point-set family dense,
re-stores its vectors quantised, and compares every member (seconds)."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import vector_compression  # noqa: E402


def test_vector_compression_compares_every_member_of_a_twin(quick_zoo, tmp_path):
    out = vector_compression.main(["--zoo", str(quick_zoo.root), "--learners", "ta-pref", "--bits", "4",
                                   "--test-limit", "8", "--device", "cpu", "--out-dir", str(tmp_path)])
    data = json.loads(Path(out["path"]).read_text())
    (family, info), = data["families"].items()
    members = len(json.loads((Path(data["config"]["zoo"]) / "zoo.json").read_text())["tasks"])
    assert info["method"] == "ta-pref" and info["disk_bytes"]["4"] < info["disk_bytes"]["32"] / 2
    rows = data["results"]
    assert {r["bits"] for r in rows} == {4} and len({r["model"] for r in rows}) > members
    for r in rows:  # each model's accuracy per task, dense and quantised, from the same test images
        assert set(r["dense"]) == set(r["quantised"]) == set(quick_zoo.tasks)
        assert r["drop_points"] == max(100 * (r["dense"][t] - r["quantised"][t]) for t in quick_zoo.tasks)
