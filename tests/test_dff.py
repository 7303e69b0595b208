"""DFF: mmtracking's layout, training on one flow-warped reference, the test-time key-frame
schedule and its streaming, and an end-to-end overfit on demo frames with the BAGS head.
CPU, tiny models; about 25 s in all on the shared 2-core box (the overfit test 10 s)."""

import json
from pathlib import Path

import pytest
import torch

from lvod.config import DataConfig, ModelConfig, load_config
from lvod.models import build_model
from lvod.models.dff import DFF, is_key_frame
from lvod.models.flownet import warp

SHAPES = "mmtracking/mmtrack-0.14.0_vid_state_dict_shapes.json"
REPO = Path(__file__).resolve().parents[1]
H, W = 64, 96
META = {"img_size": (H, W), "orig_size": (H, W)}
SMALL_FLOW = "flownet_width = 0.0625"  # the tiny configs' FlowNet (full width: 38 M parameters)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_dff(**kw):
    torch.manual_seed(0)
    return build_model(ModelConfig.tiny(kind="dff", num_classes=3, **kw))


def moving_flow(m):
    """A random FlowNet predicts real, non-zero flows (its last layer starts at zero)."""
    with torch.no_grad():
        m.motion.predict_flow.conv.weight.normal_(0, 0.05)
    return m


def target(*boxes, label=1):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": b, "labels": torch.full((len(b),), label, dtype=torch.int64)}


def test_layout_matches_mmtracking_dff(external_data):
    zoo = json.loads((external_data / SHAPES).read_text())["dff_r50_dc5"]
    m = build_model(ModelConfig(kind="dff"))
    got = {k.replace("bbox_head.predictor.", "bbox_head."): list(v.shape) for k, v in m.state_dict().items()}
    assert got == zoo["state_dict"]  # FGFA's keys without its aggregator
    assert sum(p.numel() for p in m.parameters()) == zoo["num_params"]
    assert isinstance(m, DFF) and m.key_frame_interval == 10 and m.warp_grid == "aligned"


def test_config_is_mmtrackings_dff_recipe():
    cfg = load_config(REPO / "configs/vid/dff/dff_faster_rcnn_r50_dc5_1x_imagenetvid.toml")
    assert (cfg.model.kind, cfg.model.dff_key_frame_interval) == ("dff", 10)
    assert (cfg.model.rpn_train_post_nms, cfg.model.roi_num_samples) == (1000, 512)
    assert (cfg.data.ref_sampler, cfg.data.num_ref_frames, cfg.data.ref_frame_range) == ("uniform", 1, [-9, 9])
    gs = load_config(REPO / "configs/vid/dff/gs_dff_faster_rcnn_r50_dc5_1x_imagenetvid.toml")
    assert (gs.model.head, gs.data.ref_sampler, gs.data.num_ref_frames) == ("bags", "uniform", 1)
    assert gs.model.groups_file.endswith("imagenet_vid/groups.json")
    seesaw = load_config(REPO / "configs/vid/dff/seesaw_dff_faster_rcnn_r50_dc5_1x_imagenetvid.toml")
    assert (seesaw.model.kind, seesaw.model.head, seesaw.model.roi_num_samples) == ("dff", "seesaw", 512)


def test_training_warps_the_reference_features_and_trains_flownet():
    m = moving_flow(tiny_dff())
    calls, refs = [], []
    orig = m.detector.backbone.forward
    m.detector.backbone.forward = lambda x: calls.append(x.clone()) or orig(x)
    orig_prop = m.propagate
    m.propagate = lambda feat, flow_in: refs.append(flow_in.shape) or orig_prop(feat, flow_in)
    images = torch.randn(2, 3, 3, H, W)  # a third frame is ignored, as mmtracking's ref_img[:, 0]
    losses = m(images, [(H, W), (H - 8, W)], [target([4, 4, 40, 40]), target([10, 8, 50, 60], label=3)])
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"}
    assert all(v.shape == () and torch.isfinite(v) for v in losses.values())
    assert len(calls) == 1 and torch.equal(calls[0], images[:, 1])  # the backbone sees the refs only
    assert refs == [(2, 6, H // 2, W // 2)]  # one batched FlowNet pass over (key, ref) pairs
    sum(losses.values()).backward()
    assert m.motion.predict_flow.conv.weight.grad.abs().sum() > 0  # FlowNet learns from the losses
    assert m.motion.conv1[0].conv.weight.grad.abs().sum() > 0
    assert m.detector.neck.convs[0].conv.weight.grad.abs().sum() > 0


def test_key_copies_are_detected_on_unwarped_features():
    """Image data (refs = key copies): the ref's own features, as mmtracking's
    ``0 * warped + ref`` for non-video data; the same losses as the plain detector."""
    m = moving_flow(tiny_dff())
    img = torch.randn(1, 3, H, W)
    tgt = [target([4, 4, 40, 40], [30, 20, 90, 60], label=2)]
    torch.manual_seed(5)
    got = m(torch.stack([img, img], dim=1), [(H, W)], tgt)
    torch.manual_seed(5)
    feats = m.detector.extract_feat(img)
    want, props = m.detector.rpn_train(feats, [(H, W)], [tgt[0]["boxes"]])
    want.update(m.detector.roi_head.losses(feats, props, tgt))
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    sum(got.values()).backward()
    grad = m.motion.predict_flow.conv.weight.grad
    assert grad is not None and grad.abs().sum() == 0  # in the graph, with a zero gradient


def test_frames_without_ground_truth_give_finite_losses():
    m = moving_flow(tiny_dff())
    losses = m(torch.randn(2, 2, 3, H, W), [(H, W)] * 2, [target(), target([8, 8, 60, 50])])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    with torch.no_grad():
        empty = m(torch.randn(1, 2, 3, H, W), [(H, W)], [target()])
    assert float(empty["loss_rpn_bbox"]) == 0 and float(empty["loss_bbox"]) == 0
    assert float(empty["loss_cls"]) > 0 and float(empty["loss_rpn_cls"]) > 0  # background still learns


def test_key_frame_schedule_on_a_25_frame_video():
    """Backbone and neck on frames 0, 10, 20 only (once each); FlowNet on the other 22."""
    m = tiny_dff().eval()
    assert m.key_frame_interval == 10
    assert [t for t in range(25) if is_key_frame(t, 10)] == [0, 10, 20]
    read, backbone_at, neck_calls, flow_at = [], [], [], []
    orig_backbone, orig_neck, orig_flow = m.detector.backbone.forward, m.detector.neck.forward, m.motion.predict
    m.detector.backbone.forward = lambda x: backbone_at.append(read[-1]) or orig_backbone(x)
    m.detector.neck.forward = lambda x: neck_calls.append(read[-1]) or orig_neck(x)
    m.motion.predict = lambda x: flow_at.append(read[-1]) or orig_flow(x)

    def frames():
        for t in range(25):
            read.append(t)
            yield torch.randn(3, H, W), META

    for t, det in enumerate(m.detect_video(frames(), 25)):
        assert read[-1] == t  # yielded as soon as its frame is read: nothing waits
        assert set(det) == {"boxes", "scores", "labels"}
    assert backbone_at == neck_calls == [0, 10, 20]
    assert flow_at == [t for t in range(25) if t % 10]
    m.key_frame_interval = 4
    backbone_at.clear()
    read.clear()
    list(m.detect_video(frames(), 25))
    assert backbone_at == [0, 4, 8, 12, 16, 20, 24]


@pytest.mark.parametrize("grid", ["aligned", "mmtracking"])
def test_streaming_equals_the_plain_per_frame_computation(grid):
    """Frame t as mmtracking's DFF.extract_feats computes it, with nothing cached: the key
    frame k = t - t % interval through the backbone, warped by the flow of (frame t, frame k)."""
    m = moving_flow(tiny_dff(dff_key_frame_interval=3, flow_warp=grid)).eval()
    g = torch.Generator().manual_seed(7)
    frames = [(torch.randn(3, H, W, generator=g), META) for _ in range(7)]
    streamed = list(m.detect_video(iter(frames), 7))
    assert len(streamed) == 7
    moved = 0
    with torch.no_grad():
        for t, got in enumerate(streamed):
            k = t - t % 3
            feat = m.detector.extract_feat(frames[k][0][None])
            if t != k:
                flow = m.motion(frames[t][0][None], frames[k][0][None], (H, W))
                warped = warp(feat, flow, grid)
                moved += int(not torch.allclose(warped, feat, atol=1e-3))
                feat = warped
            props = m.detector.rpn_test(feat, [(H, W)])
            want = m.detector.roi_head.detect(feat, props, [(H, W)])[0]
            assert torch.equal(got["labels"], want["labels"]), t
            torch.testing.assert_close(got["scores"], want["scores"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got["boxes"], want["boxes"], rtol=1e-5, atol=1e-3)
    assert moved == 4  # every non-key frame really was warped


def test_interval_one_is_the_single_frame_detector_and_frame_counts_are_checked():
    m = tiny_dff(dff_key_frame_interval=1).eval()
    flows = []
    m.motion.predict = lambda x: flows.append(1)
    g = torch.Generator().manual_seed(1)
    frames = [(torch.randn(3, H, W, generator=g), META) for _ in range(3)]
    assert len(list(m.detect_video(frames, 3))) == 3 and flows == []
    with pytest.raises(ValueError, match="ran out"):
        list(m.detect_video(iter(frames), 4))
    with pytest.raises(ValueError, match="more frames"):
        list(m.detect_video(iter(frames), 2))
    with pytest.raises(ValueError, match="dff_key_frame_interval"):
        ModelConfig(kind="dff", dff_key_frame_interval=0)


def test_lvod_test_and_infer_run_dff(tiny_vid, tiny_detector_config, external_data, tmp_path):
    """``lvod test`` and ``lvod infer`` stream DFF through the same interface as FGFA."""
    from lvod.engine.infer import infer_video
    from lvod.engine.test import test_model

    vid, _ = tiny_vid(tmp_path / "data", num_videos=1, num_frames=5)
    (tmp_path / "data" / "ann.json").write_bytes(vid.read_bytes())
    cfg = tiny_detector_config(
        tmp_path / "dff.toml", kind="dff", root=tmp_path / "data", extra=f"dff_key_frame_interval = 2\n{SMALL_FLOW}"
    )
    m = test_model(cfg, None, eval=("bbox",), out=tmp_path / "res.json", device="cpu", random_weights=True)
    assert m["inference"]["frames"] == 5 and "bbox_mAP_50" in m
    with pytest.warns(UserWarning, match="untrained"):
        r = infer_video(
            cfg,
            None,
            external_data / "mmtracking/master/demo/demo.mp4",
            tmp_path / "infer",
            score_thr=0.0,
            device="cpu",
            random_weights=True,
            max_frames=3,
            overrides=("data.img_scale=[128, 72]",),
            progress=False,
        )
    assert r["frames"] == 3 and r["detections"] > 0


def test_mmtracking_dff_checkpoint_loads_and_asks_for_its_warp_grid(tiny_detector_config, tmp_path):
    import warnings

    from lvod.engine.checkpointing import save_checkpoint
    from lvod.engine.inference import load_model

    cfg_path = tiny_detector_config(tmp_path / "dff.toml", kind="dff", root=tmp_path, extra=SMALL_FLOW)
    cfg = load_config(cfg_path)
    model, _ = load_model(cfg, None, random_weights=True)
    mm = {}
    for k, v in model.state_dict().items():  # back to mmdet names and background-last rows
        if ".predictor.fc_cls." in k:
            v = torch.cat([v[1:], v[:1]])
        mm[k.replace("bbox_head.predictor.", "bbox_head.")] = v
    path = save_checkpoint({"state_dict": mm, "meta": {}}, tmp_path / "dff_mm.pth")
    with pytest.warns(UserWarning, match="DFF weights.*model.flow_warp=mmtracking"):
        loaded, _ = load_model(cfg, path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(load_config(cfg_path, ["model.flow_warp=mmtracking"]), path)


# ------------------------------------------------------------------ end to end
OVERFIT_STEPS = 80


def overfit_demo_frames(kind, demo_data, tmp_path, *, steps=OVERFIT_STEPS, **model_kw):
    """tests/test_overfit.py's check for another detector, with the BAGS head: a tiny
    detector (frozen ResNet-18) trained on the first frames of one demo video through lvod's
    pipeline, then ``run_inference`` + ``evaluate`` on the same frames. Returns the metrics."""
    from test_overfit import NUM_FRAMES, few_demo_frames

    from lvod.bags_io import load_groups
    from lvod.data.cocovid import load_cocovid
    from lvod.engine.data import TrainDataset, collate
    from lvod.engine.inference import build_test_transform, run_inference
    from lvod.evaluation.report import evaluate
    from lvod.evaluation.results import ResultsWriter, load_npz

    torch.manual_seed(0)
    coco = load_cocovid(few_demo_frames(demo_data, tmp_path), images_root=demo_data["images_root"])
    refs = {"dff": dict(ref_sampler="uniform", num_ref_frames=1)}.get(kind, {})
    data = DataConfig(img_scale=[160, 128], ref_frame_range=[-2, 2], flip_prob=0.5, **refs)
    dataset = TrainDataset([(coco, True, True)], data)
    assert len(dataset) == NUM_FRAMES
    groups = load_groups(REPO / "intermediate_files" / "demo" / "groups.json")
    cfg = ModelConfig.tiny(
        kind=kind,
        num_classes=len(coco.cat_ids),
        head="bags",
        backbone_stages=3,  # the demo model's C4 backbone, frozen
        frozen_stages=3,
        test_max_dets=100,
        **model_kw,
    )
    model = build_model(cfg, coco.cat_ids, groups=groups)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [steps * 3 // 4], 0.1)
    model.train()
    for step in range(steps):
        batch = collate([dataset[(step % NUM_FRAMES, step)]], data.size_divisor)
        losses = model(batch["images"], batch["image_sizes"], batch["targets"])
        assert "loss_cls" in losses and any(k.startswith("bags_") for k in losses)
        opt.zero_grad()
        sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
        opt.step()
        sched.step()
    with ResultsWriter(tmp_path / "dets.npz") as writer:
        stats = run_inference(model, coco, None, build_test_transform(data), writer=writer, progress=False)
    assert stats["frames"] == NUM_FRAMES
    return evaluate(coco, load_npz(tmp_path / "dets.npz"), motion=False)


@pytest.mark.slow
def test_tiny_dff_with_bags_overfits_demo_frames(demo_data, tmp_path):
    # key frame interval 2: frames 1 and 3 are detected on flow-warped features of 0 and 2
    metrics = overfit_demo_frames("dff", demo_data, tmp_path, dff_key_frame_interval=2)
    present = [c for c in metrics["classwise"] if c["num_gt"] > 0]
    assert len(present) >= 3
    assert metrics["bbox_mAP_50"] >= 0.9, metrics["classwise"]
    assert all(c["ap50"] >= 0.8 for c in present), present
