"""Tests of lvod.models.checkpoint: mmtracking import, torchvision/FlowNet loaders, freezing.

The mmtracking layout comes from ../shared/external-data/mmtracking/
mmtrack-0.14.0_vid_state_dict_shapes.json (every key and shape of the model-zoo checkpoints).
Each R50 detector is built once per module (about 1 s each on CPU).
"""

import json

import pytest
import torch
import torchvision
from torch import nn

from lvod.errors import DataError
from lvod.models import checkpoint as ck
from lvod.models.heads import build_head

REPO_DOC = ck.Path(__file__).resolve().parents[1] / "docs" / "checkpoint_mapping.md"


def _synthetic(shapes: dict) -> dict:
    """Tensors with mmtracking's key names and shapes whose values tell keys and rows apart:
    row r of key i holds ``i + 1e-4 * r`` everywhere. They are broadcast views of one small
    vector each (cheap at 100M values; copies and comparisons still see the full shape).
    No two keys hold equal tensors (row 0 differs), and the rows of a matrix all differ."""
    out = {}
    for i, (k, shape) in enumerate(shapes.items()):
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(i, dtype=torch.long)
        elif not shape:
            out[k] = torch.tensor(float(i))
        else:
            rows = torch.arange(shape[0], dtype=torch.float32) * 1e-4 + i
            out[k] = rows.view(-1, *[1] * (len(shape) - 1)).expand(shape)
    return out


@pytest.fixture(scope="module")
def zoo_shapes(external_data):
    path = external_data / "mmtracking" / "mmtrack-0.14.0_vid_state_dict_shapes.json"
    return {name: entry["state_dict"] for name, entry in json.loads(path.read_text()).items()}


def _build(kind: str, head: str = "softmax", **kw):
    from lvod.config import ModelConfig
    from lvod.models import build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(kind=kind, head=head, **kw))


@pytest.fixture(scope="module")
def fgfa_sd(zoo_shapes):
    return _synthetic(zoo_shapes["fgfa_r50_dc5"])


@pytest.fixture(scope="module")
def fgfa_model():
    return _build("fgfa")


@pytest.fixture(scope="module")
def selsa_model():
    return _build("selsa")


@pytest.fixture(scope="module")
def dff_model():
    return _build("dff")


@pytest.fixture(scope="module")
def temporal_roi_align_model():
    return _build("temporal_roi_align")


def troi_layout(selsa: dict) -> dict:
    """mmtracking 0.14's Temporal RoI Align R50-DC5 state dict layout, derived from its
    config and modules (not in the shapes file; docs/checkpoint_mapping.md): SELSA's keys,
    a third shared FC with its SelsaAggregator (``num_shared_fcs=3``), and
    ``TemporalRoIAlign``'s ``embed_network`` (an mmcv ConvModule 512 -> 512, 3x3, no norm, so
    with a bias)."""
    out = dict(selsa)
    out[f"{ck._CLS}.shared_fcs.2.weight"] = [1024, 1024]
    out[f"{ck._CLS}.shared_fcs.2.bias"] = [1024]
    for fc in ("fc_embed", "ref_fc_embed", "fc", "ref_fc"):
        out[f"{ck._CLS}.aggregator.2.{fc}.weight"] = [1024, 1024]
        out[f"{ck._CLS}.aggregator.2.{fc}.bias"] = [1024]
    out["detector.roi_head.bbox_roi_extractor.embed_network.conv.weight"] = [512, 512, 3, 3]
    out["detector.roi_head.bbox_roi_extractor.embed_network.conv.bias"] = [512]
    return out


def _zoo_sd(kind: str, zoo_shapes: dict) -> dict:
    if kind == "temporal_roi_align":
        return _synthetic(troi_layout(zoo_shapes["selsa_r50_dc5"]))
    return _synthetic(zoo_shapes[f"{kind}_r50_dc5"])


def _assert_every_tensor_arrived(model, sd, report):
    own = model.state_dict()
    n_cls = 0
    for mm_key, value in sd.items():
        lv_key, rule = ck.map_key(mm_key)
        if rule is not None and rule.transform == "counter" and lv_key not in own:
            assert mm_key in report.dropped  # FrozenBatchNorm2d has no batch counter
            continue
        assert lv_key in own, f"{mm_key} -> {lv_key} has no place in the lvod model"
        expected = value
        if rule.transform == "cls_rows":  # background-last rows moved to the front
            expected = torch.cat([value[-1:], value[:-1]])
            assert torch.equal(own[lv_key][0], value[-1]) and torch.equal(own[lv_key][1], value[0])
            n_cls += 1
        assert torch.equal(own[lv_key], expected.to(own[lv_key].dtype)), mm_key
    assert n_cls == 2
    assert report.missing == [] and report.unexpected == []


def test_batch_counters_are_copied_into_eval_bn_and_dropped_for_frozen_bn(fgfa_sd, fgfa_model):
    counters = [k for k in fgfa_sd if k.endswith("num_batches_tracked")]
    assert len(counters) == 53  # every BatchNorm of the ResNet-50
    report = ck.import_mmtracking(fgfa_sd, fgfa_model, kind="fgfa")  # default backbone_norm "eval"
    assert not any(k in report.dropped for k in counters)
    frozen = _build("single", backbone_norm="frozen")
    report = ck.import_mmtracking(fgfa_sd, frozen, kind="fgfa")
    assert sorted(k for k in report.dropped if k.startswith("detector.")) == sorted(counters)
    assert report.missing == []
    own = frozen.state_dict()
    for k in counters:  # the affine and statistics still arrive in the FrozenBatchNorm2d buffers
        stem = k[: -len("num_batches_tracked")]
        for part in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(own[stem + part], fgfa_sd[stem + part].to(own[stem + part].dtype))


@pytest.mark.parametrize("kind", ["fgfa", "selsa", "dff", "temporal_roi_align"])
def test_import_every_mmtracking_tensor_lands_at_its_lvod_key(kind, zoo_shapes, fgfa_sd, request):
    model = request.getfixturevalue(f"{kind}_model")
    sd = fgfa_sd if kind == "fgfa" else _zoo_sd(kind, zoo_shapes)
    assert len(sd) == {"fgfa": 369, "selsa": 350, "dff": 367, "temporal_roi_align": 362}[kind]
    assert ck.checkpoint_kind(sd) == kind
    report = ck.import_mmtracking({"state_dict": sd}, model, kind=kind)
    _assert_every_tensor_arrived(model, sd, report)
    assert len(report.loaded) + len(report.dropped) == len(sd)
    assert sorted(report.permuted) == [f"{ck._CLS}.predictor.fc_cls.bias", f"{ck._CLS}.predictor.fc_cls.weight"]


def test_troialign_model_has_the_derived_layout(zoo_shapes, temporal_roi_align_model):
    got = {
        k.replace("bbox_head.predictor.", "bbox_head."): list(v.shape)
        for k, v in temporal_roi_align_model.state_dict().items()
    }
    assert got == troi_layout(zoo_shapes["selsa_r50_dc5"])
    n = sum(p.numel() for p in temporal_roi_align_model.parameters())
    assert n == 70_628_627 + 1_049_600 + 4_198_400 + 2_359_808  # SELSA + FC + aggregator + embed conv


@pytest.mark.parametrize(
    ("source", "kind", "why"),
    [
        ("fgfa", "dff", r"has 'aggregator\.\*' keys, so it is not an mmtracking dff checkpoint \(looks like: fgfa\)"),
        ("dff", "selsa", r"has no 'detector\.roi_head\.bbox_head\.aggregator\.\*' keys.*looks like: dff"),
        ("temporal_roi_align", "selsa", r"has 'detector\.roi_head\.bbox_roi_extractor\.\*' keys"),
        ("selsa", "temporal_roi_align", r"not an mmtracking temporal_roi_align checkpoint \(looks like: selsa\)"),
    ],
)
def test_import_refuses_another_detectors_checkpoint(source, kind, why, zoo_shapes, fgfa_sd, dff_model):
    sd = fgfa_sd if source == "fgfa" else _zoo_sd(source, zoo_shapes)
    before = dff_model.state_dict()["detector.rpn_head.rpn_cls.bias"].clone()
    with pytest.raises(DataError, match=why):
        ck.import_mmtracking(sd, dff_model, kind=kind)
    assert torch.equal(dff_model.state_dict()["detector.rpn_head.rpn_cls.bias"], before)  # nothing copied


def test_import_reports_missing_and_unexpected_and_refuses_shape_mismatch(fgfa_sd, fgfa_model):
    sd = dict(fgfa_sd)
    gone = "detector.rpn_head.rpn_conv.bias"
    with torch.no_grad():
        fgfa_model.state_dict()[gone].fill_(-5.0)
    del sd[gone]
    sd["detector.roi_head.bbox_head.extra_fc.weight"] = torch.zeros(3)
    report = ck.import_mmtracking({"meta": {"epoch": 7}, "state_dict": sd}, fgfa_model, kind="fgfa")
    assert report.missing == [gone]
    assert bool((fgfa_model.state_dict()[gone] == -5.0).all())  # a missing key keeps its value
    assert report.unexpected == ["detector.roi_head.bbox_head.extra_fc.weight"]
    assert "missing 1" in report.format() and "extra_fc" in report.format()

    sd = dict(fgfa_sd)
    sd["detector.rpn_head.rpn_cls.weight"] = torch.full((12, 512, 1, 1), 9.0)
    sd["detector.neck.convs.0.conv.bias"] = torch.zeros(256)
    with pytest.raises(DataError, match=r"detector\.neck\.convs\.0\.conv\.bias.*\(256,\).*\(512,\)"):
        ck.import_mmtracking(sd, fgfa_model, kind="fgfa")
    # refused before anything was copied
    assert not bool((fgfa_model.state_dict()["detector.rpn_head.rpn_cls.weight"] == 9.0).any())
    with pytest.raises(DataError, match="not an mmtracking selsa checkpoint"):
        ck.import_mmtracking(sd, fgfa_model, kind="selsa")


def test_import_reads_a_checkpoint_file(fgfa_sd, tmp_path):
    small = {k: v for k, v in fgfa_sd.items() if k.startswith(("motion.conv1", "detector.rpn_head"))}
    path = tmp_path / "fgfa.pth"
    torch.save({"meta": {"epoch": 7}, "state_dict": small}, path)
    model = nn.Module()
    model.motion = nn.Module()
    model.motion.conv1 = nn.ModuleList([nn.Module()])
    model.motion.conv1[0].conv = nn.Conv2d(6, 64, 7)
    report = ck.import_mmtracking(path, model, kind="fgfa")
    assert report.source == str(path) and len(report.loaded) == 2 and report.missing == []
    assert sorted(report.unexpected) == sorted(k for k in small if k.startswith("detector."))
    assert torch.equal(model.motion.conv1[0].conv.bias, small["motion.conv1.0.conv.bias"])


def test_single_frame_detector_takes_the_shared_parts_of_an_fgfa_checkpoint(fgfa_sd):
    model = _build("single")
    sd = fgfa_sd
    report = ck.import_mmtracking(sd, model, kind="fgfa")
    assert report.missing == []
    assert report.unexpected and all(k.startswith(("motion.", "aggregator.")) for k in report.unexpected)
    w = model.state_dict()["detector.roi_head.bbox_head.predictor.fc_cls.weight"]
    assert torch.equal(w[0], sd["detector.roi_head.bbox_head.fc_cls.weight"][30])  # background


def test_cls_rows_by_head_type():
    w = torch.arange(4.0)[:, None].repeat(1, 2)  # rows 0,1,2 = classes, 3 = background (mmdet)
    soft = build_head("softmax", 2, 3)
    torch.testing.assert_close(ck._convert_cls_rows(w, soft, "k", "s")[:, 0], torch.tensor([3.0, 0, 1, 2]))
    seesaw = build_head("seesaw", 2, 2)  # C+2 = 4 rows, already mmdet's layout
    assert ck._convert_cls_rows(w, seesaw, "k", "s") is w
    l2b = torch.tensor([[0, 1], [0, 1]])
    with pytest.warns(UserWarning, match="single object group"):
        bags = build_head("bags", 2, 1, label2binlabel=l2b, pred_slice=torch.tensor([[0, 2], [2, 2]]))
    assert ck._convert_cls_rows(w, bags, "k", "s") is w  # original BAGS rows copied as they are


def test_mapping_doc_holds_the_code_table(tmp_path):
    text = REPO_DOC.read_text()
    assert ck.mapping_table_markdown() in text
    stale = tmp_path / "mapping.md"  # the generator puts the table back in place
    stale.write_text(text.replace("| `motion.*` | `motion.*` | copy |", "| `motion.*` | `old.*` | copy |"))
    assert ck.write_mapping_doc(stale) and stale.read_text() == text
    assert not ck.write_mapping_doc(stale)
    for rule in ck.KEY_RULES:  # every rule appears once, in code order
        assert text.count(f"| `{rule.mm}` |") == 1
    assert (
        ck.map_key("detector.roi_head.bbox_head.fc_cls.weight")[0]
        == "detector.roi_head.bbox_head.predictor.fc_cls.weight"
    )
    assert ck.map_key("detector.backbone.layer1.0.bn1.num_batches_tracked") == (
        "detector.backbone.layer1.0.bn1.num_batches_tracked",
        ck.KEY_RULES[2],
    )
    assert ck.map_key("unknown.weight") == (None, None)


# ------------------------------------------------------------------ torchvision ResNet
def test_torchvision_resnet_round_trip(tmp_path):
    from lvod.models.backbone import ResNetDC5

    torch.manual_seed(0)
    src = torchvision.models.resnet18()  # the loader is depth-agnostic; 18 keeps the test fast
    with torch.no_grad():
        for name, t in src.state_dict().items():
            if t.is_floating_point() and ("bn" in name or "downsample.1" in name):
                t.copy_(torch.rand_like(t) + 0.5)  # BN defaults are all ones/zeros: make them distinct
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    backbone = ResNetDC5(18)
    report = ck.load_torchvision_resnet(backbone, path)
    got = backbone.state_dict()
    for k, v in src.state_dict().items():
        if k.startswith("fc."):
            assert k in report.dropped
        else:  # batch counters included: the default norm_eval BatchNorm keeps them
            assert torch.equal(got[k], v), k
    assert report.missing == [] and report.unexpected == []
    bad = {k: v for k, v in src.state_dict().items()}
    bad["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(DataError, match=r"layer1\.0\.conv1\.weight.*\(64, 64, 1, 1\).*\(64, 64, 3, 3\)"):
        ck.load_torchvision_resnet(backbone, bad)
    with pytest.raises(DataError, match="not torchvision ResNet keys"):
        ck.load_torchvision_resnet(backbone, {**bad, "head.weight": torch.zeros(1)})


def test_torchvision_spec_uses_the_weight_enum_without_network(monkeypatch):
    from lvod.models.backbone import ResNetDC5

    backbone = ResNetDC5(18)
    src = torchvision.models.resnet18().state_dict()
    asked = []

    def fake_get_state_dict(self, *args, **kwargs):
        asked.append(self)
        return src

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", fake_get_state_dict)
    report = ck.load_torchvision_resnet(backbone, "torchvision://IMAGENET1K_V1")
    assert asked == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1]
    assert torch.equal(backbone.state_dict()["layer4.1.conv2.weight"], src["layer4.1.conv2.weight"])
    assert report.source == "torchvision://IMAGENET1K_V1"
    with pytest.raises(DataError, match="IMAGENET1K_V1"):
        ck.load_torchvision_resnet(backbone, "torchvision://IMAGENET9K")


def test_read_state_dict_refuses_non_tensor_content(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"state_dict": {"a": 1}}, path)
    with pytest.raises(DataError, match="not a mapping of names to tensors"):
        ck.read_state_dict(path)
    with pytest.raises(DataError, match="does not exist"):
        ck.read_state_dict(tmp_path / "none.pth")


# ------------------------------------------------------------------ FlowNetSimple
def test_flownet_weights_with_and_without_prefix(fgfa_sd, fgfa_model, tmp_path):
    motion = fgfa_model.motion
    bare = {k[len("motion.") :]: v for k, v in fgfa_sd.items() if k.startswith("motion.")}
    torch.save(bare, tmp_path / "flownet_simple.pth")
    with torch.no_grad():
        for p in motion.parameters():
            p.zero_()
    report = ck.load_flownet_weights(motion, tmp_path / "flownet_simple.pth")
    assert report.missing == [] and report.unexpected == [] and len(report.loaded) == len(bare)
    for k, v in bare.items():
        assert torch.equal(motion.state_dict()[k], v)
    with torch.no_grad():
        for p in motion.parameters():
            p.zero_()
    report = ck.load_flownet_weights(motion, {"state_dict": fgfa_sd})  # a whole FGFA checkpoint
    assert report.unexpected == [] and report.missing == []
    assert torch.equal(motion.state_dict()["conv1.0.conv.weight"], fgfa_sd["motion.conv1.0.conv.weight"])
    with pytest.raises(DataError, match="FlowNetSimple"):
        ck.load_flownet_weights(motion, {"foo.weight": torch.zeros(1)})


# ------------------------------------------------------------------ decoupled protocol
class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.predictor = build_head("softmax", 4, 2)

    def forward(self, x):
        return self.predictor(self.body(x))


def test_freeze_all_but_classifier():
    model = _Toy()
    names = ck.freeze_all_but_classifier(model)
    assert names == ["predictor.fc_cls.weight", "predictor.fc_cls.bias"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == names
    bn = model.body[1]
    stats = bn.running_mean.clone()
    model.train()  # the engine calls this every epoch: frozen BN must stay in eval mode
    cls, deltas = model(torch.randn(2, 3, 8, 8) * 5 + 3)
    assert not bn.training and torch.equal(bn.running_mean, stats)
    cls.sum().backward()
    assert model.predictor.fc_cls.weight.grad is not None
    assert model.predictor.fc_reg.weight.grad is None and model.body[0].weight.grad is None


def test_freeze_on_a_real_detector_keeps_only_fc_cls(selsa_model):
    names = ck.freeze_all_but_classifier(selsa_model)
    assert names == [f"{ck._CLS}.predictor.fc_cls.weight", f"{ck._CLS}.predictor.fc_cls.bias"]
    for p in selsa_model.parameters():  # leave the shared fixture as built
        p.requires_grad_(True)
