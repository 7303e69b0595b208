"""Temporal RoI Align on SELSA: the most-similar RoI align and the temporal attention
against a brute-force reading of the paper / mmtracking, training, the per-video streaming
in both reading modes against the plain per-frame computation, and an end-to-end overfit on
demo frames with the BAGS head. The checkpoint layout is tested in tests/test_checkpoint.py.
CPU, tiny models; about 45 s in all on the shared 2-core box (the overfit test 35 s)."""

from pathlib import Path

import pytest
import torch

from lvod.config import ModelConfig, load_config
from lvod.models import build_model
from lvod.models.selsa import ref_indices
from lvod.models.temporal_roi_align import SelsaTRoIAlign, TemporalRoIAlign, TemporalRoIHead

REPO = Path(__file__).resolve().parents[1]
H, W = 64, 96
META = {"img_size": (H, W), "orig_size": (H, W)}

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_troi(**kw):
    torch.manual_seed(0)
    return build_model(ModelConfig.tiny(kind="temporal_roi_align", num_classes=3, **kw))


def target(*boxes, label=1):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": b, "labels": torch.full((len(b),), label, dtype=torch.int64)}


def brute_force_troi(ext: TemporalRoIAlign, roi: torch.Tensor, maps: list[torch.Tensor]) -> torch.Tensor:
    """The paper's two steps point by point, with Python loops: for every RoI point, the k
    positions of each map with the highest cosine similarity, averaged with softmax weights;
    then per attention block, softmax over frames of <embed(f), embed(key)> / sqrt(C/blocks)."""
    r, c, s, _ = roi.shape
    k, blocks = ext.num_most_similar_points, ext.num_temporal_attention_blocks
    frames = [roi]
    for m in maps:
        ms = torch.zeros_like(roi)
        positions = m.flatten(1).t()  # (h*w, C)
        for i in range(r):
            for y in range(s):
                for x in range(s):
                    v = roi[i, :, y, x]
                    sims = torch.stack([torch.dot(v / v.norm(), p / p.norm()) for p in positions])
                    top = sims.argsort(descending=True)[:k]
                    w = sims[top].softmax(0)
                    ms[i, :, y, x] = (positions[top] * w[:, None]).sum(0)
        frames.append(ms)
    if blocks == 0:
        return torch.stack(frames).mean(0)
    emb = [ext.embed_network.conv(f) for f in frames]
    d = c // blocks
    out = torch.zeros_like(roi)
    for b in range(blocks):
        part = slice(b * d, (b + 1) * d)
        logits = torch.stack([(e[:, part] * emb[0][:, part]).sum(1) / d**0.5 for e in emb])  # (n, R, s, s)
        w = logits.softmax(0)
        out[:, part] = sum(w[j][:, None] * frames[j][:, part] for j in range(len(frames)))
    return out


@pytest.mark.parametrize("blocks", [0, 2])
def test_temporal_roi_align_equals_the_brute_force_reading(blocks):
    torch.manual_seed(1)
    ext = TemporalRoIAlign(8, num_most_similar_points=2, num_temporal_attention_blocks=blocks)
    roi = torch.randn(2, 8, 3, 3)
    maps = [torch.randn(8, 4, 5), torch.randn(8, 4, 5)]
    with torch.no_grad():
        got = ext(roi, torch.stack(maps))
        want = brute_force_troi(ext, roi, maps)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert ("embed_network.conv.weight" in dict(ext.named_parameters())) == (blocks > 0)


def test_most_similar_points_find_an_object_that_moved():
    """A reference map holding the key RoI's point features elsewhere (a moved object):
    with one point per map, each RoI point fetches exactly its own feature back."""
    torch.manual_seed(2)
    ext = TemporalRoIAlign(6, num_most_similar_points=1, num_temporal_attention_blocks=0)
    roi = torch.randn(1, 6, 2, 2)
    ref = torch.randn(6, 5, 7) * 0.01
    ref[:, 2:4, 4:6] = roi[0]  # the object, moved to rows 2-3, columns 4-5
    ms = ext.most_similar(roi, ref[None])
    torch.testing.assert_close(ms[0, 0], roi[0])


def test_multiplicities_equal_repeated_maps():
    """A map drawn twice (short videos) counts twice: computed once, weighted by its count."""
    torch.manual_seed(3)
    for blocks in (0, 4):
        ext = TemporalRoIAlign(8, 2, blocks)
        roi, maps = torch.randn(3, 8, 3, 3), torch.randn(2, 8, 4, 4)
        with torch.no_grad():
            counted = ext(roi, maps, torch.tensor([2.0, 1.0]))
            repeated = ext(roi, maps[[0, 0, 1]])
        torch.testing.assert_close(counted, repeated, rtol=1e-5, atol=1e-6)


def test_model_parts_carry_mmtrackings_names():
    m = tiny_troi()
    assert isinstance(m, SelsaTRoIAlign) and isinstance(m.detector.roi_head, TemporalRoIHead)
    head = m.detector.roi_head.bbox_head
    assert len(head.shared_fcs) == len(head.aggregator) == 3 and m.test_refs == 4
    ext = m.detector.roi_head.bbox_roi_extractor
    assert (ext.num_most_similar_points, ext.num_temporal_attention_blocks) == (2, 4)
    keys = set(m.state_dict())
    assert "detector.roi_head.bbox_roi_extractor.embed_network.conv.bias" in keys
    assert "detector.roi_head.bbox_head.shared_fcs.2.weight" in keys
    assert "detector.roi_head.bbox_head.aggregator.2.ref_fc_embed.weight" in keys
    two = tiny_troi(troi_shared_fcs=2, troi_attention_blocks=0)
    assert len(two.detector.roi_head.bbox_head.shared_fcs) == 2
    assert not any("bbox_roi_extractor" in k for k in two.state_dict())
    with pytest.raises(ValueError, match="troi_attention_blocks"):
        ModelConfig.tiny(kind="temporal_roi_align", troi_attention_blocks=5)  # 32 channels


def test_config_is_mmtrackings_troialign_recipe():
    cfg = load_config(REPO / "configs/vid/temporal_roi_align/selsa_troialign_faster_rcnn_r50_dc5_7e_imagenetvid.toml")
    m = cfg.model
    assert (m.kind, m.selsa_test_refs, m.selsa_attention_blocks) == ("temporal_roi_align", 14, 16)
    assert (m.troi_most_similar_points, m.troi_attention_blocks, m.troi_shared_fcs) == (2, 4, 3)
    assert (cfg.data.ref_sampler, cfg.data.num_ref_frames) == ("bilateral_uniform", 2)
    assert (cfg.train.epochs, cfg.train.lr_steps) == (7, [2, 5])
    for name, head in (("gs_", "bags"), ("seesaw_", "seesaw")):
        other = load_config(
            REPO / f"configs/vid/temporal_roi_align/{name}selsa_troialign_faster_rcnn_r50_dc5_7e_imagenetvid.toml"
        )
        assert (other.model.kind, other.model.head, other.model.troi_shared_fcs) == ("temporal_roi_align", head, 3)


def test_training_aligns_key_rois_over_the_reference_maps():
    m = tiny_troi()
    seen = []
    ext = m.detector.roi_head.bbox_roi_extractor
    orig = ext.forward
    ext.forward = lambda roi, maps, counts=None: seen.append((roi.shape, maps.shape)) or orig(roi, maps, counts)
    images = torch.randn(2, 3, 3, H, W)
    losses = m(images, [(H, W), (H, W - 16)], [target([4, 4, 40, 40]), target([10, 8, 50, 60], label=3)])
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"} == set(losses)
    assert all(v.shape == () and torch.isfinite(v) for v in losses.values())
    assert len(seen) == 2 and all(maps[0] == 2 and roi[1:] == (32, 7, 7) for roi, maps in seen)
    sum(losses.values()).backward()
    roi_head = m.detector.roi_head
    assert roi_head.bbox_roi_extractor.embed_network.conv.weight.grad.abs().sum() > 0
    assert roi_head.bbox_head.shared_fcs[2].weight.grad.abs().sum() > 0
    assert roi_head.bbox_head.aggregator[2].ref_fc_embed.weight.grad.abs().sum() > 0
    assert m.detector.neck.convs[0].conv.weight.grad.abs().sum() > 0


def test_frames_without_ground_truth_give_finite_losses():
    m = tiny_troi()
    losses = m(torch.randn(2, 3, 3, H, W), [(H, W)] * 2, [target(), target([8, 8, 60, 50])])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    with torch.no_grad():
        empty = m(torch.randn(1, 3, 3, H, W), [(H, W)], [target()])
    assert float(empty["loss_rpn_bbox"]) == 0 and float(empty["loss_bbox"]) == 0
    assert float(empty["loss_cls"]) > 0


def plain_detections(m, frames, t):
    """Frame ``t`` as mmtracking's SELSA test path computes it with the TRoI extractor,
    nothing cached: ref_x = the maps of the uniform references (a frame drawn twice, twice)
    followed by the key's map; the key RoIs' features aligned over all of them; the
    references' RoI embeddings, then the key's own, feed the aggregators."""
    roi_head = m.detector.roi_head
    ids = ref_indices(len(frames), m.test_refs)
    feats = [m.detector.extract_feat(frames[i][0][None]) for i in range(len(frames))]
    size = frames[t][1]["img_size"]
    ref_maps = torch.cat([feats[i] for i in ids] + [feats[t]])
    ref_props = m.detector.rpn_test(ref_maps, [size] * len(ref_maps))
    ref_emb = roi_head.bbox_head.ref_embeddings(roi_head.pool(ref_maps, ref_props))
    props = m.detector.rpn_test(feats[t], [size])[0]
    x = roi_head.bbox_roi_extractor(roi_head.pool(feats[t], [props]), ref_maps)
    return roi_head.predict(roi_head.bbox_head.embed(x, ref_emb), props, size)


def test_streaming_in_both_reading_modes_equals_the_plain_computation():
    m = tiny_troi(selsa_test_refs=6).eval()
    for agg in m.detector.roi_head.bbox_head.aggregator:  # make the references matter
        agg.fc.weight.data.mul_(20)
    assert ref_indices(5, 6) == [0, 1, 2, 2, 3, 4]  # frame 2 drawn twice
    calls = []
    orig = m.detector.backbone.forward
    m.detector.backbone.forward = lambda x: calls.append(x.shape[0]) or orig(x)
    g = torch.Generator().manual_seed(5)
    frames = [(torch.randn(3, H, W, generator=g), META) for _ in range(5)]
    seq = list(m.detect_video(frames, 5))  # random access: references first
    assert calls == [1] * 5
    calls.clear()
    stream = list(m.detect_video(iter(frames), 5))  # one pass; frames wait for the last reference
    assert calls == [1] * 5
    m.detector.backbone.forward = orig
    with torch.no_grad():
        for t in range(5):
            want = plain_detections(m, frames, t)
            assert len(want["scores"]) > 0
            for got in (seq[t], stream[t]):
                assert torch.equal(got["labels"], want["labels"]), t
                torch.testing.assert_close(got["scores"], want["scores"], rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(got["boxes"], want["boxes"], rtol=1e-4, atol=1e-3)


def test_references_change_the_key_frame_result_and_frame_counts_are_checked():
    m = tiny_troi(selsa_test_refs=2).eval()
    g = torch.Generator().manual_seed(4)
    key, a, b = (torch.randn(3, H, W, generator=g) for _ in range(3))
    r1 = list(m.detect_video([(key, META), (a, META)], 2))[0]
    r2 = list(m.detect_video([(key, META), (b, META)], 2))[0]
    assert r1["scores"].shape != r2["scores"].shape or not torch.allclose(r1["scores"], r2["scores"])
    with pytest.raises(ValueError, match="ran out"):
        list(m.detect_video(iter([(key, META)] * 2), 3))
    with pytest.raises(ValueError, match="more frames"):
        list(m.detect_video(iter([(key, META)] * 3), 2))


@pytest.mark.slow
def test_tiny_troialign_with_bags_overfits_demo_frames(demo_data, tmp_path):
    from test_dff import overfit_demo_frames

    metrics = overfit_demo_frames("temporal_roi_align", demo_data, tmp_path, steps=120)
    present = [c for c in metrics["classwise"] if c["num_gt"] > 0]
    assert len(present) >= 3
    assert metrics["bbox_mAP_50"] >= 0.9, metrics["classwise"]
    assert all(c["ap50"] >= 0.8 for c in present), present
