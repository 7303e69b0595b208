"""FGFA: FlowNetSimple layout and input conventions, warping, embedding aggregation, the
streaming window and its feature cache. CPU, tiny models; budget about 10 s."""

import json

import pytest
import torch

from lvod.config import ModelConfig
from lvod.errors import DataError
from lvod.io import torch_save_atomic
from lvod.models import build_model
from lvod.models.checkpoint import load_flownet_weights
from lvod.models.fgfa import EmbedAggregator, window_indices
from lvod.models.flownet import FLOW_MEAN, FlowNetSimple, resize_flow, warp

SHAPES = "mmtracking/mmtrack-0.14.0_vid_state_dict_shapes.json"
H, W = 64, 96


def tiny_fgfa(**kw):
    torch.manual_seed(0)
    return build_model(ModelConfig.tiny(kind="fgfa", num_classes=3, **kw))


def test_zero_flow_warps_features_to_themselves():
    feats = torch.randn(2, 4, 5, 7)
    out = warp(feats, torch.zeros(2, 2, 80, 112))
    assert (out - feats).abs().max() <= 1e-6


def test_integer_flow_shifts_features_with_border_padding():
    feats = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    flow = torch.zeros(1, 2, 3, 4)
    flow[:, 0] = 1.0  # sample one column to the right
    out = warp(feats, flow)
    assert torch.allclose(out[..., :3], feats[..., 1:], atol=1e-5)
    assert torch.allclose(out[..., 3], feats[..., 3], atol=1e-5)  # border repeats the edge


def test_flow_resized_to_feature_map_with_scaled_values():
    flow = torch.full((1, 2, 32, 48), 16.0)
    small = resize_flow(flow, (2, 3))
    assert small.shape == (1, 2, 2, 3) and torch.allclose(small, torch.ones(1, 2, 2, 3))


def test_aggregation_weights_sum_to_one_and_identical_refs_give_that_ref():
    torch.manual_seed(0)
    agg = EmbedAggregator(8)
    key, refs = torch.randn(1, 8, 4, 5), torch.randn(3, 8, 4, 5)
    w = agg.weights(key, refs)
    assert w.shape == (3, 1, 4, 5) and torch.allclose(w.sum(0), torch.ones(1, 4, 5), atol=1e-6)
    same = refs[:1].expand(3, -1, -1, -1)
    assert torch.allclose(agg(key, same), refs[:1], atol=1e-6)
    assert [k for k in agg.state_dict()] == ["embed_convs.0.conv.weight", "embed_convs.0.conv.bias"]


def test_flownet_layout_matches_mmtracking_and_weights_load(external_data, tmp_path):
    zoo = json.loads((external_data / SHAPES).read_text())["fgfa_r50_dc5"]["state_dict"]
    want = {k.removeprefix("motion."): v for k, v in zoo.items() if k.startswith("motion.")}
    net = FlowNetSimple()
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == want
    for name in ("deconv5", "predict_flow6", "upsample_flow2", "predict_flow"):
        assert getattr(net, name).conv.bias is None
    torch.manual_seed(3)
    src = FlowNetSimple()
    path = torch_save_atomic({f"motion.{k}": v for k, v in src.state_dict().items()}, tmp_path / "flow.pth")
    load_flownet_weights(net, path)
    assert torch.equal(net.predict_flow.conv.weight, src.predict_flow.conv.weight)
    with pytest.raises(DataError, match="width 1.0"):
        load_flownet_weights(FlowNetSimple(width=0.5), path)


def test_flownet_input_denormalised_centred_padding_zeroed_half_size():
    mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])
    pixel = torch.tensor(FLOW_MEAN) * 255.0  # a pixel that the flow net centres to 0
    img = ((pixel - mean) / std).view(3, 1, 1).expand(3, 32, 48).clone()[None]
    net = FlowNetSimple(width=1 / 16)
    x = net.prepare(img, img + 1.0, (20, 40))
    assert x.shape == (1, 6, 16, 24)
    assert x[:, :3, :9, :19].abs().max() < 1e-5  # key: centred to zero
    assert torch.allclose(x[0, 3:, 0, 0], std / 255.0, atol=1e-5)  # ref: +1 std
    assert x[:, :, 11:, :].abs().max() == 0 and x[:, :, :, 21:].abs().max() == 0  # padding
    flow = net(img, img, (32, 48))
    assert flow.shape == (1, 2, 32, 48) and flow.abs().max() == 0  # random net: identity warp


def test_window_indices_pad_edges_by_repetition():
    assert window_indices(0, 10, 5) == [0, 0, 0, 1, 2]
    assert window_indices(9, 10, 5) == [7, 8, 9, 9, 9]
    assert window_indices(4, 10, 5) == [2, 3, 4, 5, 6]
    assert window_indices(0, 1, 31) == [0] * 31


def test_training_aggregates_the_refs_only():
    m = tiny_fgfa()
    seen = []
    orig = m.aggregator.forward
    m.aggregator.forward = lambda x, refs: seen.append(refs.shape[0]) or orig(x, refs)
    m(
        torch.randn(2, 3, 3, H, W),
        [(H, W), (H, W)],
        [{"boxes": torch.tensor([[4.0, 4, 30, 30]]), "labels": torch.tensor([2])}] * 2,
    )
    assert seen == [2, 2]


def test_detect_video_computes_each_frame_once_and_reads_lazily():
    m = tiny_fgfa(fgfa_window=5).eval()
    calls, reads = [], []
    orig = m.detector.backbone.forward
    m.detector.backbone.forward = lambda x: calls.append(x.shape[0]) or orig(x)
    meta = {"img_size": (H, W), "orig_size": (H, W)}

    def frames():
        for i in range(7):
            reads.append(i)
            yield torch.randn(3, H, W), meta

    for t, _ in enumerate(m.detect_video(frames(), 7)):
        assert len(reads) == min(7, t + 3)  # never more than half a window ahead
    assert calls == [1] * 7


def test_window_of_one_equals_the_single_frame_pipeline():
    m = tiny_fgfa(fgfa_window=1).eval()
    img = torch.randn(3, H, W)
    meta = {"img_size": (H, W), "orig_size": (H, W)}
    got = next(m.detect_video([(img, meta)], 1))
    with torch.no_grad():
        feat = m.detector.extract_feat(img[None])
        props = m.detector.rpn_test(feat, [(H, W)])
        want = m.detector.roi_head.detect(feat, props, [(H, W)])[0]
    assert torch.allclose(got["boxes"], want["boxes"], atol=1e-4)
    assert torch.allclose(got["scores"], want["scores"], atol=1e-6)


def test_detect_video_refuses_too_few_frames():
    m = tiny_fgfa().eval()
    meta = {"img_size": (H, W), "orig_size": (H, W)}
    with pytest.raises(ValueError, match="ran out"):
        list(m.detect_video(iter([(torch.randn(3, H, W), meta)] * 2), 4))


def test_window_aggregation_embeds_each_distinct_frame_once_and_matches_the_plain_path():
    torch.manual_seed(3)
    agg = EmbedAggregator(8).eval()
    feats = torch.randn(4, 8, 5, 6)
    index = torch.tensor([0, 0, 0, 1, 2, 3, 3])  # edge padding repeats the first and last frame
    calls = []
    embed = agg.embed
    agg.embed = lambda x: calls.append(x.shape[0]) or embed(x)  # count frames embedded
    with torch.no_grad():
        fast = agg.aggregate_window(feats, index, key=1)
        calls_fast = list(calls)
        plain = agg(feats[1:2], feats[index])
    assert calls_fast == [4]  # one embedding pass over the 4 distinct frames
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)


def test_mmtracking_grid_pulls_samples_towards_the_origin():
    """mmtracking's flow_warp_feats divides by W where align_corners=True wants W - 1: at zero
    flow it reads column j at j * (W - 1) / W (row i at i * (H - 1) / H), not at j."""
    h, w = 5, 8
    ramp = torch.stack(
        torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    )[None]
    zero = torch.zeros(1, 2, h, w)
    torch.testing.assert_close(warp(ramp, zero, "aligned"), ramp, atol=1e-5, rtol=0)
    got = warp(ramp, zero, "mmtracking")
    torch.testing.assert_close(got[0, 1], ramp[0, 1] * (w - 1) / w, atol=1e-5, rtol=0)
    torch.testing.assert_close(got[0, 0], ramp[0, 0] * (h - 1) / h, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="grid"):
        warp(ramp, zero, "corners")


def _plain_window_detections(m, frames, t):
    """FGFA test time as mmtracking's FGFA.extract_feats writes it, with no cache: every
    window slot warped by the flow of (key, slot frame), then the centre slot replaced by the
    unwarped key; lvod's aligned grid leaves every copy of the key unwarped instead."""
    meta = frames[t][1]
    size = meta["img_size"]
    idx = window_indices(t, len(frames), m.window)
    feats = torch.cat([m.detector.extract_feat(frames[i][0][None]) for i in idx])
    key = m.detector.extract_feat(frames[t][0][None])
    imgs = torch.stack([frames[i][0] for i in idx])
    warped = warp(feats, m.motion(frames[t][0][None], imgs, size), m.warp_grid)
    for j, i in enumerate(idx):
        if j == len(idx) // 2 or (i == t and m.warp_grid == "aligned"):
            warped[j] = key[0]
    agg = m.aggregator(key, warped)
    props = m.detector.rpn_test(agg, [size])
    return m.detector.roi_head.detect(agg, props, [size])[0]


@pytest.mark.parametrize("grid", ["aligned", "mmtracking"])
def test_streaming_window_equals_the_plain_per_frame_computation(grid):
    m = tiny_fgfa(fgfa_window=5, flow_warp=grid).eval()
    with torch.no_grad():  # a random FlowNet predicts real, non-zero flows
        m.motion.predict_flow.conv.weight.normal_(0, 0.05)
    g = torch.Generator().manual_seed(8)
    meta = {"img_size": (H, W), "orig_size": (H, W)}
    frames = [(torch.randn(3, H, W, generator=g), meta) for _ in range(4)]
    pairs = []
    predict = m.motion.predict
    m.motion.predict = lambda x: pairs.append(x.shape[0]) or predict(x)
    got = list(m.detect_video(frames, 4))
    # FlowNet pairs per frame: each distinct other frame, plus (key, key) where the
    # mmtracking grid warps the key's edge copies (frames 0 and 3 of a 4-frame video)
    assert pairs == ([3, 3, 3, 3] if grid == "mmtracking" else [2, 3, 3, 2])
    with torch.no_grad():
        for t in range(4):
            want = _plain_window_detections(m, frames, t)
            assert torch.equal(got[t]["labels"], want["labels"])
            torch.testing.assert_close(got[t]["scores"], want["scores"], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(got[t]["boxes"], want["boxes"], atol=1e-3, rtol=1e-4)
