"""SELSA: the RoI attention aggregator, uniform whole-video references and the per-video
reference cache in both reading modes. CPU, tiny models; budget about 10 s."""

import json

import pytest
import torch

from lvod.config import ModelConfig
from lvod.models import build_model
from lvod.models.selsa import SelsaAggregator, ref_indices

SHAPES = "mmtracking/mmtrack-0.14.0_vid_state_dict_shapes.json"
H, W = 64, 96


def tiny_selsa(**kw):
    torch.manual_seed(0)
    return build_model(ModelConfig.tiny(kind="selsa", num_classes=3, **kw))


def test_reference_frames_are_uniform_over_the_whole_video():
    ids = ref_indices(100, 14)
    assert len(ids) == 14 and ids[0] == 0 and ids[-1] == 99
    steps = [b - a for a, b in zip(ids, ids[1:])]
    assert set(steps) <= {7, 8}  # 99 / 13 = 7.6
    short = ref_indices(5, 14)
    assert len(short) == 14 and short == sorted(short) and set(short) == {0, 1, 2, 3, 4}
    assert ref_indices(1, 14) == [0] * 14
    with pytest.raises(ValueError):
        ref_indices(0, 14)


def test_attention_rows_sum_to_one_and_one_reference_is_copied():
    torch.manual_seed(0)
    agg = SelsaAggregator(32, 4)
    x, ref = torch.randn(5, 32), torch.randn(7, 32)
    w = agg.attention(x, ref)
    assert w.shape == (4, 5, 7) and torch.allclose(w.sum(-1), torch.ones(4, 5), atol=1e-6)
    assert agg(x, ref).shape == (5, 32)
    one = agg(x, ref[:1])  # a single reference gets weight 1 in every head
    assert torch.allclose(one, agg.fc(agg.ref_fc(ref[:1])).expand(5, -1), atol=1e-5)


def test_aggregator_layout_matches_mmtracking(external_data):
    zoo = json.loads((external_data / SHAPES).read_text())["selsa_r50_dc5"]["state_dict"]
    m = build_model(ModelConfig(kind="selsa"))
    got = {k.replace("bbox_head.predictor.", "bbox_head."): list(v.shape) for k, v in m.state_dict().items()}
    assert got == zoo  # BatchNorm batch counters included (norm_eval BatchNorm, as mmtracking)


def test_training_reference_rois_receive_gradients():
    m = tiny_selsa()
    losses = m(
        torch.randn(1, 3, 3, H, W), [(H, W)], [{"boxes": torch.tensor([[4.0, 4, 40, 40]]), "labels": torch.tensor([1])}]
    )
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"} <= set(losses)
    sum(losses.values()).backward()
    agg = m.detector.roi_head.bbox_head.aggregator
    assert agg[0].ref_fc_embed.weight.grad.abs().sum() > 0
    assert agg[1].ref_fc.weight.grad.abs().sum() > 0


def test_each_frame_backbone_runs_once_in_both_reading_modes():
    m = tiny_selsa(selsa_test_refs=4).eval()
    calls = []
    orig = m.detector.backbone.forward
    m.detector.backbone.forward = lambda x: calls.append(x.shape[0]) or orig(x)
    g = torch.Generator().manual_seed(2)
    meta = {"img_size": (H, W), "orig_size": (H, W)}
    frames = [(torch.randn(3, H, W, generator=g), meta) for _ in range(9)]
    seq = list(m.detect_video(frames, 9))  # random access: refs first
    assert calls == [1] * 9
    calls.clear()
    stream = list(m.detect_video(iter(frames), 9))  # one pass over an iterator
    assert calls == [1] * 9
    assert len(seq) == len(stream) == 9
    for a, b in zip(seq, stream):
        assert torch.allclose(a["scores"], b["scores"], atol=1e-5)
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-3)


def test_references_change_the_key_frame_result():
    m = tiny_selsa(selsa_test_refs=2).eval()
    # make the aggregation strong enough to matter in a random network
    for agg in m.detector.roi_head.bbox_head.aggregator:
        agg.fc.weight.data.mul_(50)
    meta = {"img_size": (H, W), "orig_size": (H, W)}
    g = torch.Generator().manual_seed(4)
    key, a, b = (torch.randn(3, H, W, generator=g) for _ in range(3))
    r1 = list(m.detect_video([(key, meta), (a, meta)], 2))[0]
    r2 = list(m.detect_video([(key, meta), (b, meta)], 2))[0]
    assert r1["scores"].shape != r2["scores"].shape or not torch.allclose(r1["scores"], r2["scores"])


@pytest.mark.parametrize("stream", [False, True])
def test_key_frame_rois_join_the_references_at_test_time(stream):
    """mmtracking's test path appends the key frame to the references (``ref_x = cat(refs,
    key)``): every key RoI also attends to the key's own proposals, after the references."""
    m = tiny_selsa(selsa_test_refs=2).eval()
    seen = []
    m.detector.roi_head.bbox_head.aggregator[0].register_forward_hook(
        lambda mod, args, out: seen.append((args[0].clone(), args[1].clone()))
    )
    g = torch.Generator().manual_seed(6)
    meta = {"img_size": (H, W), "orig_size": (H, W)}
    frames = [(torch.randn(3, H, W, generator=g), meta) for _ in range(3)]
    with torch.no_grad():  # the references' own rows: frames 0 and 2, as ref_embeddings gives them
        feats = torch.cat([m.detector.extract_feat(f[0][None]) for f in frames])
        ref_rows = m._ref_embeddings(feats[[0, 2]], [meta["img_size"]] * 2)[0]
    list(m.detect_video(iter(frames) if stream else frames, 3))
    assert len(seen) == 3
    for x, ref in seen:  # x: the key's first-FC RoI features, aggregator 0's input
        assert ref.shape[0] == len(ref_rows) + len(x)
        torch.testing.assert_close(ref[: len(ref_rows)], ref_rows)
        assert torch.equal(ref[len(ref_rows) :], x)
