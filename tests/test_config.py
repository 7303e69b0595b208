"""Typed config: every shipped file loads, includes merge, bad keys/types name key and file."""

import sys
import warnings
from pathlib import Path

import pytest

from lvod.config import Config, config_from_dict, config_to_dict, load_config, parse_override, save_config
from lvod.errors import DataError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.toml"))


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    for want in (
        "imagenet_vid_fgfa_style.toml",
        "gs_imagenet_vid_fgfa_style.toml",
        "faster_rcnn_r50_dc5.toml",
        "gs_fgfa_faster_rcnn_r50_dc5_1x_imagenetvid.toml",
        "fgfa_faster_rcnn_r50_dc5_1x_imagenetvid.toml",
        "seesaw_fgfa_faster_rcnn_r50_dc5_1x_imagenetvid.toml",
        "gs_fgfa_faster_rcnn_r50_dc5_decoupled_imagenetvid.toml",
        "selsa_faster_rcnn_r50_dc5_1x_imagenetvid.toml",
        "gs_selsa_faster_rcnn_r50_dc5_1x_imagenetvid.toml",
        "faster_rcnn_r50_dc5_1x_imagenetvid.toml",
        "fgfa_r18_demo_softmax.toml",
        "fgfa_r18_demo_bags.toml",
        "fgfa_r18_demo_eqlv2.toml",
        "fgfa_r18_demo_fedloss.toml",
        "eqlv2_fgfa_faster_rcnn_r50_dc5_1x_imagenetvid.toml",
        "fedloss_fgfa_faster_rcnn_r50_dc5_1x_imagenetvid.toml",
        "eqlv2_selsa_faster_rcnn_r50_dc5_1x_imagenetvid.toml",
        "fedloss_selsa_faster_rcnn_r50_dc5_1x_imagenetvid.toml",
    ):
        assert want in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_round_trips(path, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # shipped configs use the current names only
        cfg = load_config(path)
    assert cfg.name == path.stem
    save_config(cfg, tmp_path / "config.resolved.json")
    again = load_config(tmp_path / "config.resolved.json")
    assert config_to_dict(again) == config_to_dict(cfg)


def test_experiments_share_bases():
    gs = load_config(CONFIGS[0].parent.parent.parent / "vid/fgfa/gs_fgfa_faster_rcnn_r50_dc5_1x_imagenetvid.toml")
    assert (gs.model.kind, gs.model.head, gs.model.depth) == ("fgfa", "bags", 50)
    assert gs.model.groups_file.endswith("imagenet_vid/groups.json")
    assert gs.data.ref_frame_range == [-9, 9] and gs.data.img_scale == [1000, 600]
    assert [s.load_as_video for s in gs.data.train] == [True, False]
    assert (gs.train.lr, gs.train.lr_steps, gs.train.epochs, gs.train.grad_clip) == (0.01, [2, 5], 7, 35.0)
    dec = load_config(
        CONFIGS[0].parent.parent.parent / "vid/fgfa/gs_fgfa_faster_rcnn_r50_dc5_decoupled_imagenetvid.toml"
    )
    assert dec.train.freeze == "all_but_classifier" and dec.train.init_from
    assert dec.model.bags.others_sample_ratio == 8.0 and dec.model.head_settings() == {
        "others_sample_ratio": 8.0,
        "seed": None,
    }


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_include_merges_tables_and_replaces_values(tmp_path):
    write(
        tmp_path / "base" / "b.toml",
        '[data]\nroot = "/data/vid"\nimg_scale = [800, 480]\n[train]\nlr = 0.02\nlr_steps = [3, 6]\n',
    )
    exp = write(tmp_path / "exp.toml", 'include = "base/b.toml"\n[train]\nlr_steps = [4]\n')
    cfg = load_config(exp, ["train.epochs=9", "data.root=/elsewhere"])
    assert cfg.data.root == "/elsewhere" and cfg.data.img_scale == [800, 480]
    assert (cfg.train.lr, cfg.train.lr_steps, cfg.train.epochs) == (0.02, [4], 9)
    assert cfg.train.momentum == 0.9 and cfg.name == "exp"


def test_unknown_key_names_key_and_file(tmp_path):
    base = write(tmp_path / "b.toml", "[train]\nlearning_rate = 0.1\n")
    exp = write(tmp_path / "e.toml", 'include = ["b.toml"]\n[train]\nepochs = 2\n')
    with pytest.raises(DataError) as err:
        load_config(exp)
    assert "train.learning_rate" in str(err.value) and str(base) in str(err.value)
    assert "valid keys" in str(err.value) and "lr," in str(err.value)
    with pytest.raises(DataError, match="unknown key"):
        load_config(write(tmp_path / "m.toml", "[model]\nbackbone = 'r50'\n"))


@pytest.mark.parametrize(
    "text, key",
    [
        ("[train]\nepochs = 7.5\n", "train.epochs"),
        ("[train]\namp = 1\n", "train.amp"),
        ("[train]\nlr = '0.01'\n", "train.lr"),
        ("[data]\nimg_scale = [1000, '600']\n", "data.img_scale[1]"),
        ("[data]\ntrain = [{ann_file = 3}]\n", "data.train[0].ann_file"),
        ("[data]\nref_sampler = 'random'\n", "data.ref_sampler"),
        ("[model]\nanchor_scales = 8\n", "model.anchor_scales"),
        ("[model]\nfgfa_window = 4\n", "model"),
    ],
)
def test_wrong_type_names_key_and_file(tmp_path, text, key):
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(DataError) as err:
        load_config(path)
    assert f"'{key}" in str(err.value) and str(path) in str(err.value)


def test_floats_accept_integers_and_lists_become_tuples_for_model(tmp_path):
    cfg = load_config(write(tmp_path / "ok.toml", "[train]\nlr = 1\n[model]\nanchor_ratios = [1, 2]\n"))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.anchor_ratios == (1, 2)


def test_overrides_are_type_checked():
    assert parse_override("train.lr=0.02") == ("train.lr", 0.02)
    assert parse_override("data.img_scale=[800, 480]") == ("data.img_scale", [800, 480])
    assert parse_override("data.root=/data/vid") == ("data.root", "/data/vid")
    with pytest.raises(DataError, match="key.sub=value"):
        parse_override("train.lr")
    cfg_path = CONFIGS[0]
    with pytest.raises(DataError) as err:
        load_config(cfg_path, ["train.epochs=many"])
    assert "<command line>" in str(err.value) and "train.epochs" in str(err.value)
    with pytest.raises(DataError, match="train.lrr"):
        load_config(cfg_path, ["train.lrr=1"])


def test_include_cycle_is_reported(tmp_path):
    write(tmp_path / "a.toml", 'include = "b.toml"\n')
    write(tmp_path / "b.toml", 'include = "a.toml"\n')
    with pytest.raises(DataError, match="cycle"):
        load_config(tmp_path / "a.toml")


def test_config_from_checkpoint_dict():
    cfg = Config(name="x")
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_config_module_imports_no_torch():
    """The schema is plain data: reading a config must not pull in torch or the models."""
    import subprocess

    code = "import sys, lvod.config; sys.exit(int('torch' in sys.modules or 'lvod.models' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_head_settings_are_a_typed_section_of_the_chosen_head(tmp_path):
    cfg = load_config(write(tmp_path / "s.toml", '[model]\nhead = "seesaw"\n[model.seesaw]\nq = 1\n'))
    assert cfg.model.head_settings() == {"p": 0.8, "q": 1.0, "eps": 0.01}
    with pytest.raises(DataError) as err:
        load_config(write(tmp_path / "u.toml", '[model]\nhead = "seesaw"\n[model.seesaw]\nr = 1\n'))
    assert "model.seesaw.r" in str(err.value) and "u.toml" in str(err.value)
    with pytest.raises(DataError) as err:
        load_config(write(tmp_path / "t.toml", '[model]\nhead = "bags"\n[model.bags]\nseed = "x"\n'))
    assert "model.bags.seed" in str(err.value) and "t.toml" in str(err.value)
    with pytest.raises(DataError) as err:  # settings of a head that is not chosen do nothing
        load_config(write(tmp_path / "w.toml", '[model]\nhead = "softmax"\n[model.bags]\nseed = 1\n'))
    assert "model.bags" in str(err.value) and "w.toml" in str(err.value) and "model.head" in str(err.value)
    with pytest.raises(DataError, match="'focal' is not one of"):
        load_config(write(tmp_path / "f.toml", '[model]\nhead = "focal"\n'))
    assert "bags" not in config_to_dict(cfg)["model"] and "seesaw" in config_to_dict(cfg)["model"]


def test_old_names_in_files_are_migrated_with_a_warning(tmp_path):
    old = write(
        tmp_path / "old.toml",
        '[data]\ngroups_file = "g.json"\nmean = [1, 2, 3]\n'
        '[model]\nhead = "bags"\n[model.head_kwargs]\nothers_sample_ratio = 4.0\n',
    )
    with pytest.warns(FutureWarning, match="data.groups_file is now model.groups_file"):
        cfg = load_config(old)
    assert cfg.model.groups_file == "g.json" and cfg.model.image_mean == (1.0, 2.0, 3.0)
    assert cfg.model.bags.others_sample_ratio == 4.0
    bad = write(tmp_path / "bad.toml", "[model.head_kwargs]\np = 1.0\n")  # softmax takes none
    with pytest.raises(DataError) as err:
        load_config(bad)
    assert "bad.toml" in str(err.value) and "takes no settings" in str(err.value)


def test_config_of_an_old_checkpoint_still_loads():
    """A checkpoint written before the model section owned these settings (its dumped
    config has data.groups_file / data.mean / model.head_kwargs) loads as the same run."""
    old = config_to_dict(Config(name="old"))
    del old["model"]["groups_file"]
    old["model"]["head"] = "bags"
    old["model"]["head_kwargs"] = {"others_sample_ratio": 8.0, "cat_ids": [1, 2]}
    old["data"]["groups_file"] = "intermediate_files/demo/groups.json"
    old["data"]["mean"], old["data"]["std"] = list(old["model"]["image_mean"]), list(old["model"]["image_std"])
    cfg = config_from_dict(old)
    assert cfg.model.head == "bags" and cfg.model.groups_file == "intermediate_files/demo/groups.json"
    assert cfg.model.bags.others_sample_ratio == 8.0 and cfg.model.image_mean == Config().model.image_mean
    assert "head_kwargs" in old["model"]  # the caller's dict is not modified
