"""Tests for lvod.groups / lvod.bags_io: builders, invariants, JSON and BAGS files.

The reference check rebuilds BAGS' LVIS v0.5 tables from the per-class instance counts
shipped with them and demands exact equality. Budget: about 3 s.
"""

import json
import math
import pickle
import pickletools
import zipfile

import numpy as np
import pytest
import torch

from lvod.bags_io import (
    SafeUnpickler,
    export_bags,
    import_bags,
    load_groups,
    make_groups,
    read_bags_counts,
    read_valsplit,
    safe_unpickle,
    save_groups,
)
from lvod.errors import DataError
from lvod.groups import build_groups, format_groups, log_edges, quantile_edges

LVIS = "bags/BUPT-PRIV_BalancedGroupSoftmax@lvis/data/lvis"


@pytest.fixture(scope="module")
def lvis_dir(request):
    ext = request.getfixturevalue("external_data")
    return ext / LVIS


@pytest.fixture(scope="module")
def lvis_table(lvis_dir):
    ids, counts = read_bags_counts(lvis_dir / "class_to_imageid_and_inscount.pt")
    assert ids.tolist() == list(range(1, 1231)) and counts.sum() == 693958
    return build_groups(ids, counts, method="edges", edges=(10, 100, 1000), dataset="lvis_v0.5")


def small_table(**kw):
    # ids deliberately unsorted; counts put 30 and 10 in the tail bin, 20 in the head bin
    args = dict(method="edges", edges=(10, 100, 1000), names=["c30", "c10", "c20", "c40"], dataset="toy")
    args.update(kw)
    return build_groups([30, 10, 20, 40], [5, 3, 5000, 50], **args)


# ----------------------------------------------------------------------------- builders


def test_small_table_by_hand():
    t = small_table()
    # labels: 1 = id 10, 2 = id 20, 3 = id 30, 4 = id 40; bin [100, 1000) is empty -> dropped
    assert t.cat_ids == (10, 20, 30, 40) and t.cat_names == ("c10", "c20", "c30", "c40")
    assert t.counts == (3, 5000, 5, 50)
    assert t.groups == ((10, 30), (40,), (20,))
    assert t.group_bins == ("[0, 10)", "[10, 100)", "[1000, inf)") and t.group_names == ("rare", "common", "frequent")
    assert t.label2binlabel.dtype == torch.int64
    assert t.label2binlabel.tolist() == [[0, 1, 1, 1, 1], [0, 1, 0, 2, 0], [0, 0, 0, 0, 1], [0, 0, 1, 0, 0]]
    assert t.pred_slice.tolist() == [[0, 2], [2, 3], [5, 2], [7, 2]]
    assert t.num_groups == 3 and t.num_logits == 9 == int(t.pred_slice[:, 1].sum())
    assert t.group_of_label.tolist() == [0, 1, 3, 1, 2]
    assert t.rank_of_label.tolist() == [0, 1, 1, 2, 1]


def test_quantile_edges_by_hand():
    assert quantile_edges([1, 2, 3, 4, 5, 6], 3) == (3, 5)
    # the target cut (position 3) falls inside the tie of 5s: it moves to the nearest change (4)
    assert quantile_edges([5, 5, 5, 5, 9, 9], 2) == (9,)
    # equidistant changes (positions 1 and 3 around target 2): the lower one wins
    assert quantile_edges([1, 4, 4, 7], 2) == (4,)
    assert quantile_edges([7, 7, 7], 3) == ()
    t = build_groups([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], method="quantiles", k=3)
    assert t.groups == ((5, 6), (3, 4), (1, 2)) and t.edges == (3, 5) and t.k == 3
    t = build_groups([1, 2, 3, 4, 5, 6], [5, 5, 5, 5, 9, 9], method="quantiles", k=3)
    assert t.groups == ((1, 2, 3, 4), (5, 6))  # ties never split; the duplicate edge collapses


def test_log_edges_by_hand():
    assert log_edges([1, 7, 1000], 3) == (10, 100)  # float noise around 10.0 must not give 11
    assert log_edges([4, 8, 16], 2) == (8,)
    assert log_edges([0, 100], 2) == (10,)  # min 0 is treated as 1
    assert log_edges([5, 5], 4) == ()
    assert log_edges([20, 30], 2) == (25,)  # 24.49 rounds up: bins of integers unchanged
    t = build_groups([1, 2, 3, 4], [1, 9, 10, 1000], method="log", k=3)
    assert t.groups == ((1, 2), (3,), (4,)) and t.group_bins == ("[0, 10)", "[10, 100)", "[100, inf)")


def test_builder_rejects_bad_arguments():
    with pytest.raises(ValueError, match="needs edges"):
        build_groups([1], [3])
    with pytest.raises(ValueError, match="unknown group method"):
        build_groups([1], [3], method="equal")
    with pytest.raises(ValueError, match="k >= 1"):
        build_groups([1], [3], method="quantiles", k=0)
    with pytest.raises(DataError, match="strictly ascending"):
        build_groups([1, 1], [3, 4], edges=(10,))
    with pytest.raises(DataError, match="positive and strictly ascending"):
        build_groups([1, 2], [3, 4], edges=(100, 10))


# ----------------------------------------------------------------------------- reference BAGS tables


def test_reproduces_bags_lvis_v05_exactly(lvis_dir, lvis_table, tmp_path):
    t = lvis_table
    ref_l2b = torch.load(lvis_dir / "label2binlabel.pt", weights_only=True)
    ref_ps = torch.load(lvis_dir / "pred_slice_with0.pt", weights_only=True)
    assert t.label2binlabel.dtype == ref_l2b.dtype == torch.int64
    assert torch.equal(t.label2binlabel, ref_l2b)
    assert torch.equal(t.pred_slice, ref_ps)
    assert t.num_logits == 1236 == int(ref_ps[-1].sum())
    paths = export_bags(t, tmp_path)
    mine, ref = read_valsplit(paths["valsplit.pkl"]), read_valsplit(lvis_dir / "valsplit.pkl")
    assert (
        list(mine) == list(ref) == ["(0, 10)", "[10, 100)", "[100, 1000)", "[1000, ~)", "normal", "background", "all"]
    )
    for key in ref:
        assert mine[key].dtype == np.int64 and np.array_equal(mine[key], ref[key]), key
    assert torch.equal(torch.load(paths["label2binlabel.pt"], weights_only=True), ref_l2b)
    for name in ("label2binlabel.pt", "pred_slice_with0.pt"):  # legacy format like the reference files
        assert not zipfile.is_zipfile(paths[name]) and not zipfile.is_zipfile(lvis_dir / name)
    # the export names numpy's rebuild function the way numpy 1.x (the BAGS code's) can import
    globals_ = {a for op, a, _ in pickletools.genops(paths["valsplit.pkl"].read_bytes()) if op.name == "GLOBAL"}
    assert "numpy.core.multiarray _reconstruct" in globals_


def test_import_reference_v05_and_v1(lvis_dir, lvis_table):
    t = import_bags(lvis_dir)
    assert t.groups == lvis_table.groups and t.edges == (10, 100, 1000) and t.counts is None and t.notes == ()
    v1 = import_bags(lvis_dir / "lvis_v1")
    assert v1.num_classes == 1203 and [len(g) for g in v1.groups] == [200, 412, 334, 257]
    assert v1.pred_slice.tolist() == [[0, 2], [2, 201], [203, 413], [616, 335], [951, 258]]
    notes = " | ".join(v1.notes)
    assert "1231 columns for 1203 classes" in notes
    assert "'normal' holds 1230 labels" in notes and "'all' holds 1231 labels" in notes


def test_bags_export_import_roundtrip(tmp_path):
    t = small_table()
    export_bags(t, tmp_path)
    back = import_bags(
        tmp_path, cat_ids=[40, 10, 30, 20], names=["c40", "c10", "c30", "c20"], counts=[50, 3, 5, 5000], dataset="toy"
    )
    assert back == t and back.notes == ()


def test_import_rejects_tables_that_disagree_with_valsplit(tmp_path):
    export_bags(small_table(), tmp_path)
    l2b = torch.load(tmp_path / "label2binlabel.pt", weights_only=True)
    l2b[1, 3] = 1  # collides with the rank of label 1
    torch.save(l2b, tmp_path / "label2binlabel.pt")
    with pytest.raises(DataError, match=r"label2binlabel\.pt: row 1 column 3"):
        import_bags(tmp_path)
    export_bags(small_table(), tmp_path)
    torch.save(torch.tensor([[0, 1], [1, 3], [4, 2], [6, 2]]), tmp_path / "pred_slice_with0.pt")
    with pytest.raises(DataError, match=r"pred_slice_with0\.pt"):
        import_bags(tmp_path)


# ----------------------------------------------------------------------------- restricted unpickling


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "valsplit.pkl"
    bad.write_bytes(pickle.dumps({"(0, 10)": _Evil(marker)}, protocol=3))
    with pytest.raises(DataError, match=r"global (posix|os|nt)\.system.*refused"):
        read_valsplit(bad)
    assert not marker.exists()
    bad.write_bytes(pickle.dumps({"(0, 10)": _Evil(marker)}, protocol=5))  # STACK_GLOBAL path
    with pytest.raises(DataError, match="refused"):
        safe_unpickle(bad)
    assert not marker.exists()


def test_restricted_unpickler_scope(tmp_path):
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps({"a": np.arange(3)}, protocol=3))
    with pytest.raises(DataError, match="numpy"):  # no globals at all allowed
        safe_unpickle(p, allow_numpy=False)
    p.write_bytes(pickle.dumps({"a": np.array([1.5])}, protocol=5))
    with pytest.raises(DataError, match="1-D integer array"):  # readable, but not a label list
        read_valsplit(p)
    p.write_bytes(pickle.dumps({"a": np.array([3, 1], dtype=np.int32)}, protocol=5))
    assert read_valsplit(p)["a"].dtype == np.int64
    assert isinstance(SafeUnpickler, type) and issubclass(SafeUnpickler, pickle.Unpickler)


# ----------------------------------------------------------------------------- JSON file


def test_json_roundtrip_and_content(tmp_path, lvis_table):
    for t in (small_table(), build_groups([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], method="quantiles", k=3), lvis_table):
        p = save_groups(t, tmp_path / "g.json")
        back = load_groups(p)
        assert back == t and torch.equal(back.label2binlabel, t.label2binlabel)
    d = json.loads(save_groups(small_table(), tmp_path / "s.json").read_text())
    assert d["format"] == "lvod-groups" and d["format_version"] == 1
    assert "0 = background" in d["label_convention"]
    assert d["groups"][1]["label_map"] == [0, 1, 0, 2, 0] and d["groups"][3]["hi"] is None
    assert d["classes"][1] == {"label": 2, "category_id": 20, "name": "c20", "count": 5000, "group": 3, "rank": 1}


def _mutations():
    def two_groups(d):
        d["groups"][2]["category_ids"] = [10, 40]

    def no_group(d):
        d["groups"][1]["category_ids"] = [30]

    def rank(d):
        d["groups"][1]["label_map"] = [0, 2, 0, 1, 0]

    def slice_len(d):
        d["groups"][2]["slice"] = [5, 3]

    def slice_gap(d):
        d["groups"][3]["slice"] = [8, 2]

    def bg_3way(d):
        d["groups"][0]["slice"] = [0, 3]

    def logits(d):
        d["num_logits"] = 8

    def count(d):
        d["classes"][3]["count"] = 500

    def version(d):
        d["format_version"] = 2

    def edges(d):
        d["edges"] = [10, 1000]

    return [two_groups, no_group, rank, slice_len, slice_gap, bg_3way, logits, count, version, edges]


@pytest.mark.parametrize("mutate", _mutations(), ids=lambda f: f.__name__)
def test_every_broken_invariant_raises_naming_the_file(tmp_path, mutate):
    p = save_groups(small_table(), tmp_path / "groups.json")
    d = json.loads(p.read_text())
    mutate(d)
    p.write_text(json.dumps(d))
    with pytest.raises(DataError) as e:
        load_groups(p)
    assert str(p) in str(e.value) and "fix:" in str(e.value)


def test_quantile_edges_must_match_counts(tmp_path):
    t = build_groups([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], method="quantiles", k=2)
    assert t.edges == (4,)
    p = save_groups(t, tmp_path / "q.json")
    d = json.loads(p.read_text())
    d["classes"][3]["count"] = 100  # still inside bin [4, inf), but the median moves to 5
    p.write_text(json.dumps(d))
    with pytest.raises(DataError, match="not the quantiles edges"):
        load_groups(p)


# ----------------------------------------------------------------------------- command line


def test_make_groups_from_stats_csv(tmp_path, capsys):
    from lvod.cli import main

    csv = tmp_path / "class_stats.csv"
    csv.write_text("category_id,name,boxes,tracks\n1,airplane,50,3\n2,bear,5,1\n3,car,500,9\n4,dog,7,2\n")
    out = tmp_path / "out" / "groups.json"
    table, paths = make_groups(csv, out, method="edges", edges=[10, 100], dataset="toy")
    assert paths == {"groups": out} and load_groups(out) == table
    assert table.groups == ((2, 4), (1,), (3,)) and table.cat_names == ("airplane", "bear", "car", "dog")
    assert (
        main(["groups", str(csv), "--dataset", "toy", "--method", "edges", "--edges", "10,100", "--out", str(out)]) == 0
    )
    text = capsys.readouterr().out
    assert "[0, 10)" in text and "bear, dog" in text and str(out) in text
    assert "(boxes column of the stats CSV)" in text and "counts: training instances" in text
    table, paths = make_groups(csv, out, method="quantiles", k=2, bags_dir=tmp_path / "bags")
    assert load_groups(out).groups == ((2, 4), (1, 3)) == table.groups
    assert paths["valsplit.pkl"] == tmp_path / "bags" / "valsplit.pkl" and paths["valsplit.pkl"].is_file()
    csv.write_text("category_id,boxes\n1,5\n")
    with pytest.raises(DataError, match=r"missing columns \['name'\]"):
        make_groups(csv, out, method="edges", edges=[10])
    assert main(["groups", str(csv), "--dataset", "toy", "--edges", "10", "--method", "edges"]) == 1
    assert "missing columns ['name']" in capsys.readouterr().err


def test_groups_command_exit_codes_for_bad_edges_and_k(tmp_path, capsys, monkeypatch):
    from lvod.cli import main

    monkeypatch.chdir(tmp_path)
    csv = tmp_path / "class_stats.csv"
    csv.write_text("category_id,name,boxes\n1,a,50\n2,b,5\n")
    # arguments that cannot mean anything: usage errors (2)
    assert main(["groups", str(csv), "--dataset", "toy", "--method", "edges", "--edges", "ten"]) == 2
    assert main(["groups", str(csv), "--dataset", "toy", "--method", "quantiles", "-k", "0"]) == 2
    assert "integer k >= 1" in capsys.readouterr().err
    # a table that breaks an invariant: a DataError naming the record (1)
    assert main(["groups", str(csv), "--dataset", "toy", "--method", "edges", "--edges", "100,10"]) == 1
    assert "edges [100, 10] are not positive and strictly ascending" in capsys.readouterr().err
    assert not (tmp_path / "intermediate_files").exists()


def test_make_groups_from_annotations(external_data, tmp_path):
    ann = external_data / "mmtracking/master/tests/data/demo_cocovid_data/ann.json"
    t, _ = make_groups(ann, tmp_path / "g.json", method="edges", edges=[5])
    assert load_groups(tmp_path / "g.json") == t
    # non-crowd boxes: car 4 (instance 1; the 3 crowd boxes do not count), person 3
    assert t.counts == (4, 3) and t.groups == ((1, 2),) and t.dataset == "ann"
    assert math.isclose(t.bounds[0][1], 5)


def _demo_stats_csv(path):
    """A stats CSV with the demo dataset's classes, ids 1..12 listed in reverse order."""
    from lvod.data.demo import CLASSES, TRAIN_TRACKS

    rows = [f"{i},{name},{TRAIN_TRACKS[name] * 12}" for i, (name, *_) in enumerate(CLASSES, start=1)]
    path.write_text("category_id,name,boxes\n" + "\n".join(reversed(rows)) + "\n")
    return path


def test_cli_bags_export_then_from_bags_import_gives_the_same_groups_json(tmp_path, capsys):
    from lvod.cli import main

    csv = _demo_stats_csv(tmp_path / "class_stats.csv")
    bags, built, imported = tmp_path / "bags", tmp_path / "built.json", tmp_path / "imported.json"
    # demo train boxes run 12..384: edges 30, 100 put 3, 5 and 4 classes in the three bins
    assert (
        main(
            [
                "groups",
                str(csv),
                "--dataset",
                "demo",
                "--method",
                "edges",
                "--edges",
                "30,100",
                "--bags-dir",
                str(bags),
                "--out",
                str(built),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in bags.iterdir()) == ["label2binlabel.pt", "pred_slice_with0.pt", "valsplit.pkl"]
    capsys.readouterr()
    assert main(["groups", str(csv), "--from-bags", str(bags), "--dataset", "demo", "--out", str(imported)]) == 0
    assert "BAGS files in" in capsys.readouterr().out
    a, b = json.loads(built.read_text()), json.loads(imported.read_text())
    assert a["num_groups"] == 3 and [g["num_classes"] for g in a["groups"][1:]] == [3, 5, 4]
    assert a == b
    assert load_groups(imported) == load_groups(built)


def test_cli_from_bags_without_source_and_against_a_wrong_dataset(tmp_path, capsys):
    from lvod.cli import main

    csv = _demo_stats_csv(tmp_path / "class_stats.csv")
    bags = tmp_path / "bags"
    assert (
        main(
            [
                "groups",
                str(csv),
                "--dataset",
                "demo",
                "--method",
                "edges",
                "--edges",
                "30,100",
                "--bags-dir",
                str(bags),
                "--out",
                str(tmp_path / "built.json"),
            ]
        )
        == 0
    )
    # no source: labels are the ids, names are the ids, no counts; the bins survive
    assert main(["groups", "--from-bags", str(bags), "--dataset", "demo", "--out", str(tmp_path / "bare.json")]) == 0
    bare, built = load_groups(tmp_path / "bare.json"), load_groups(tmp_path / "built.json")
    assert bare.counts is None and bare.groups == built.groups and bare.edges == built.edges
    capsys.readouterr()
    # counts that put classes outside the imported bins are refused, naming the class
    text = csv.read_text().replace("blue_square,384", "blue_square,5")
    csv.write_text(text)
    assert (
        main(["groups", str(csv), "--from-bags", str(bags), "--dataset", "demo", "--out", str(tmp_path / "bad.json")])
        == 1
    )
    err = capsys.readouterr().err
    assert "valsplit.pkl" in err and "category_id 2" in err and "outside its group's bin" in err
    assert not (tmp_path / "bad.json").exists()
    # neither a source nor --from-bags
    assert main(["groups", "--dataset", "demo"]) == 2
    assert "--from-bags" in capsys.readouterr().err


# ----------------------------------------------------------------------------- basis, lvis edges, names


def test_lvis_method_uses_fixed_image_edges_and_readable_names():
    # LVIS: rare 1-10, common 11-100, frequent > 100 training images
    t = build_groups([1, 2, 3, 4, 5, 6], [1, 10, 11, 100, 101, 5000], method="lvis", basis="images")
    assert t.edges == (11, 101) and t.k is None and t.basis == "images"
    assert t.groups == ((1, 2), (3, 4), (5, 6))
    assert t.group_names == ("rare", "common", "frequent")
    assert t.group_bins == ("[0, 11)", "[11, 101)", "[101, inf)")
    assert t.group_labels[0] == "rare [0, 11)"
    assert "counts: training images" in format_groups(t) and "rare " in format_groups(t)
    # empty bins are dropped: two groups are not "rare/common/frequent" any more
    two = build_groups([1, 2], [3, 500], method="lvis", basis="images")
    assert two.group_names == ("g1", "g2") and two.group_labels == ("g1 [0, 11)", "g2 [101, inf)")
    with pytest.raises(ValueError, match="fixed edges"):
        build_groups([1], [3], method="lvis", edges=(5,))


def test_basis_and_names_round_trip_and_are_checked(tmp_path):
    t = build_groups([1, 2, 3, 4, 5, 6], [1, 10, 11, 100, 101, 5000], method="lvis", basis="images")
    p = save_groups(t, tmp_path / "g.json")
    d = json.loads(p.read_text())
    assert d["basis"] == "images" and "images" in d["counts_are"]
    assert [(g["name"], g.get("bin")) for g in d["groups"][1:]] == [
        ("rare", "[0, 11)"),
        ("common", "[11, 101)"),
        ("frequent", "[101, inf)"),
    ]
    assert load_groups(p) == t and load_groups(p).basis == "images"
    # a table written before the basis field counted instances
    del d["basis"]
    p.write_text(json.dumps(d))
    assert load_groups(p).basis == "instances" and load_groups(p) != t
    d["basis"] = "videos"
    p.write_text(json.dumps(d))
    with pytest.raises(DataError, match="unknown basis 'videos'"):
        load_groups(p)
    d["basis"], d["edges"] = "images", [11, 100]
    p.write_text(json.dumps(d))
    with pytest.raises(DataError, match="fixed edges"):
        load_groups(p)


def test_image_basis_counts_key_frames_holding_the_class(tmp_path, capsys, tiny_vid):
    from lvod.cli import main

    # 2 videos x 12 frames, every 3rd frame a key frame (0, 3, 6, 9); video v holds class
    # 1 + v % 2, one box per frame; frames 5 and 6 only a crowd box. Key frames with a
    # non-crowd box: 0, 3, 9 -> 3 per class; instances: 12 - 2 crowd = 10 per class.
    vid, _ = tiny_vid(tmp_path, num_videos=2, num_frames=12, det_images=0)
    out = tmp_path / "g.json"
    t_img, _ = make_groups(vid, out, method="edges", edges=[5], basis="images")
    assert t_img.counts == (3, 3) and t_img.basis == "images"
    t_inst, _ = make_groups(vid, out, method="edges", edges=[5])
    assert t_inst.counts == (10, 10) and t_inst.basis == "instances"
    # --method lvis counts images unless told otherwise
    assert main(["groups", str(vid), "--dataset", "tiny", "--method", "lvis", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert load_groups(out).basis == "images" and load_groups(out).counts == (3, 3)
    assert "counts: training images" in text and "\ng1        [0, 11) " in text  # one group: g1, not "rare"
    assert (
        main(["groups", str(vid), "--dataset", "tiny", "--method", "lvis", "--basis", "instances", "--out", str(out)])
        == 0
    )
    assert load_groups(out).counts == (10, 10) and load_groups(out).basis == "instances"
