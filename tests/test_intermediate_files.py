"""The committed group tables are exactly what the commands produce from the demo data."""

from pathlib import Path

from lvod.bags_io import load_groups, make_groups

REPO = Path(__file__).resolve().parents[1]


def test_committed_demo_groups_are_what_lvod_groups_writes(demo_data, tmp_path):
    committed = REPO / "intermediate_files" / "demo" / "groups.json"
    out = tmp_path / "groups.json"
    make_groups(demo_data["train_json"], out, method="quantiles", k=3, dataset="demo")
    assert out.read_bytes() == committed.read_bytes(), (
        "intermediate_files/demo/groups.json is stale: regenerate it with "
        "`lvod data demo --out data/demo && lvod groups data/demo/annotations/train.json --dataset demo -k 3`"
    )
    table = load_groups(committed)
    assert table.num_classes == 12 and table.num_groups == 3
