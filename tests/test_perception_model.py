"""The multi-task perception network: shapes, decoding, a short training run, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou
from stagepilot.perception.checkpoint import CheckpointError, load_checkpoint, load_grown, save_checkpoint
from stagepilot.perception.labels import CARLA_TAG_TO_SEG, CLASSES, SEG_CLASSES, seg_mask_from_tags
from stagepilot.perception.network import PerceptionNet, build_model
from stagepilot.perception.targets import quality_focal_loss as _quality_focal_loss

H, W = 360, 640
# class index -> (RGB colour, seg class) of the synthetic rectangles
_PAINT = {0: ((0.9, 0.1, 0.1), SEG_CLASSES.index("vehicle")),
          1: ((0.1, 0.9, 0.1), SEG_CLASSES.index("pedestrian")),
          5: ((0.1, 0.1, 0.9), 0)}


def _synthetic(n: int, h: int = 192, w: int = 320, seed: int = 0):
    """Noise frames with a road band and a few painted rectangles of known classes: (images, targets)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, h, w, generator=g) * 0.3       # (N, 3, H, W)
    targets = []
    for i in range(n):
        mask = torch.zeros(h, w, dtype=torch.long)
        images[i, :, h * 2 // 3:, :] += 0.4                    # road: the lower third, grey
        mask[h * 2 // 3:, :] = SEG_CLASSES.index("road")
        boxes, labels = [], []
        for _ in range(3):
            label = list(_PAINT)[int(torch.randint(len(_PAINT), (1,), generator=g))]
            bw, bh = (int(v) for v in torch.randint(16, min(72, h // 2), (2,), generator=g))
            x0 = int(torch.randint(0, w - bw, (1,), generator=g))
            y0 = int(torch.randint(0, h - bh, (1,), generator=g))
            colour, seg_class = _PAINT[label]
            images[i, :, y0:y0 + bh, x0:x0 + bw] = torch.tensor(colour).view(3, 1, 1)
            mask[y0:y0 + bh, x0:x0 + bw] = seg_class
            boxes.append([x0, y0, x0 + bw, y0 + bh])
            labels.append(label)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                        "mask": mask})
    return images.clamp(0, 1), targets


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PerceptionNet().eval()


def test_output_shapes_for_a_camera_frame(model):
    with torch.inference_mode():
        out = model(torch.rand(2, 3, H, W))
    assert model.strides == (4, 8)
    for cls, box, stride in zip(out["cls"], out["box"], model.strides):
        assert cls.shape == (2, len(CLASSES), H // stride, W // stride)
        assert box.shape == (2, 4, H // stride, W // stride)
    assert out["seg"].shape == (2, len(SEG_CLASSES), H // 4, W // 4)
    assert out["image_size"] == (H, W)


def test_channels_last_bf16_autocast_runs_on_cpu(model):
    model = PerceptionNet().eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, H, W).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        dets = model.decode(model(x), score_threshold=0.0)
    assert dets[0]["seg"].shape == (H, W)
    assert torch.isfinite(dets[0]["boxes"]).all()


def test_decode_keeps_boxes_inside_the_image(model):
    with torch.inference_mode():
        out = model(torch.rand(1, 3, H, W))
        out["box"] = [box * 50.0 for box in out["box"]]  # huge distances: boxes must still be clipped to the frame
        dets = model.decode(out, score_threshold=0.0, max_detections=300)
    boxes = dets[0]["boxes"]
    assert 0 < boxes.shape[0] <= 300
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert dets[0]["labels"].max() < len(CLASSES)
    assert dets[0]["seg"].shape == (H, W)


def test_small_boxes_train_the_stride_4_head_and_large_ones_the_stride_8_head(model):
    """FCOS assignment by size: a 10 px car has positives only on the stride-4 map, a 60 px car only
    on the stride-8 map, and a 24 px car (in the overlap) on both."""
    with torch.inference_mode():
        out = model(torch.rand(1, 3, H, W))
    points, _, _ = model._flatten_levels(out)
    n4 = out["cls"][0].shape[-2] * out["cls"][0].shape[-1]
    for side, on4, on8 in ((10, True, False), (60, False, True), (24, True, True)):
        box = torch.tensor([[300.0, 200.0, 300.0 + side, 200.0 + side * 0.6]])
        matches, start = [], 0
        for stride, cls in zip(model.strides, out["cls"]):
            h, w = cls.shape[-2:]
            m, target = model._assign(box, torch.tensor([0]), points[start:start + h * w], h, w, stride)
            assert torch.equal(target.sum(1) > 0, m >= 0)
            matches.append(m)
            start += h * w
        assert bool((matches[0] >= 0).any()) == on4 and bool((matches[1] >= 0).any()) == on8, side
    assert n4 == (H // 4) * (W // 4)


def test_visible_assignment_learns_a_cut_car_from_the_cells_that_show_it():
    """``assignment: visible``: a car 30 px wide whose middle is hidden by a pole has positives
    only on stride-4 cells whose block shows vehicle pixels, none on the pole at its centre; a car
    with no vehicle pixel under any candidate cell, and a light (no seg class), keep the centre
    rule; the default rule ignores the mask; an unknown rule is refused by name."""
    from stagepilot.perception.targets import assign, perception_loss, visible_cells

    h, w, stride = 32, 48, 4
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    points = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float() * stride + stride // 2
    mask = torch.zeros(h * stride, w * stride, dtype=torch.long)
    vehicle = SEG_CLASSES.index("vehicle")
    mask[40:60, 40:52] = vehicle  # the car's left and right, with a pole from x 52 to 58 between
    mask[40:60, 58:70] = vehicle
    car, hidden, light = [40.0, 40.0, 70.0, 60.0], [120.0, 40.0, 140.0, 56.0], [150.0, 10.0, 158.0, 26.0]
    boxes = torch.tensor([car, hidden, light])
    labels = torch.tensor([CLASSES.index("vehicle"), CLASSES.index("vehicle"), CLASSES.index("traffic_light_red")])
    visible = visible_cells(mask, labels, h, w, stride)
    kw = {"strides": (4, 8), "num_classes": len(CLASSES)}
    centre_match, _ = assign(boxes, labels, points, h, w, stride, **kw)
    match, target = assign(boxes, labels, points, h, w, stride, visible=visible, **kw)
    on_car = points[match == 0]
    assert len(on_car) and not ((on_car[:, 0] > 52) & (on_car[:, 0] < 58)).any()  # nothing on the pole
    assert ((points[centre_match == 0][:, 0] > 52) & (points[centre_match == 0][:, 0] < 58)).any()
    assert bool(mask[on_car[:, 1].long(), on_car[:, 0].long()].eq(vehicle).all())
    for k in (1, 2):  # no vehicle pixel under the hidden car; the light has no seg class
        assert torch.equal(match == k, centre_match == k) and bool((match == k).any())
    assert torch.equal(target.sum(1) > 0, match >= 0)
    net = PerceptionNet()
    images, targets = _synthetic(1)
    with pytest.raises(ValueError, match="assignment must be one of centre, visible, got 'box'"):
        perception_loss(net(images), targets, strides=net.strides, num_classes=len(net.classes),
                        dice_index=net.dice_index, assignment="box")
    loss = net.loss(net(images), targets, assignment="visible")
    assert torch.isfinite(loss["total"])


def _fit_one_tiny_box(architecture: str, steps: int = 200) -> tuple[list[float], list[float]]:
    """Train on one frame holding a pedestrian 1.3 px wide that lies inside stride-4 cell (1, 1)
    but beside its centre (6, 6): -> (its box, the box the cell predicts) in px."""
    torch.manual_seed(0)
    net = build_model(architecture, input_size=(96, 160)).train()
    images = torch.rand(2, 3, 96, 160)
    box = [6.5, 4.2, 7.8, 7.9]
    target = {"boxes": torch.tensor([box, [20.0, 20.0, 60.0, 50.0]]), "labels": torch.tensor([1, 0]),
              "mask": torch.zeros(96, 160, dtype=torch.long)}
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = net.loss(net(images), [target, target])
        opt.zero_grad()
        loss["total"].backward()
        opt.step()
    with torch.no_grad():
        points, _, dist = net._flatten_levels(net(images))
    cell = 1 * (160 // 4) + 1                                   # stride-4 cell (1, 1), centre (6, 6)
    assert points[cell].tolist() == [6.0, 6.0]
    d = dist[0, cell]
    return box, torch.cat([points[cell] - d[:2], points[cell] + d[2:]]).tolist()


def test_centre_size_boxes_fit_a_box_beside_its_cell_centre_which_ltrb_cannot():
    box, cs = _fit_one_tiny_box("mtl_mbv3small_fpn96_s48_seg4_cs")
    assert max(abs(a - b) for a, b in zip(cs, box)) < 0.3, cs
    box, ltrb = _fit_one_tiny_box("mtl_mbv3small_fpn96_s48_seg4")
    assert ltrb[0] <= 6.0 + 1e-3 < box[0], ltrb             # held to the cell centre: 0.5 px too wide
    assert build_model("mtl_mbv3small_fpn96_s48_seg4_cs").architecture.endswith("_seg4_cs")
    assert PerceptionNet().architecture == "mtl_mbv3small_fpn96_s48_seg4"


def test_carla_tags_map_to_seg_classes():
    tags = torch.tensor([[0, 1, 24, 2], [14, 15, 16, 12]])
    seg = seg_mask_from_tags(tags)
    names = [[SEG_CLASSES[int(v)] for v in row] for row in seg]
    assert names == [["background", "road", "road_line", "sidewalk"], ["vehicle", "vehicle", "vehicle", "pedestrian"]]
    assert set(CARLA_TAG_TO_SEG.values()) <= set(range(len(SEG_CLASSES)))


@pytest.mark.parametrize("cls_loss, box_loss", [("focal", "giou"), ("quality_focal", "giou"),
                                               ("quality_focal", "giou_nwd")])
def test_short_training_run_lowers_the_loss(cls_loss, box_loss):
    torch.manual_seed(0)
    net = PerceptionNet().train()
    images, targets = _synthetic(4)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses, parts = [], {"cls": [], "box": [], "seg": []}
    for step in range(40):
        i = (step * 2) % 4
        out = net(images[i:i + 2])
        loss = net.loss(out, targets[i:i + 2], cls_loss=cls_loss, box_loss=box_loss)
        opt.zero_grad()
        loss["total"].backward()
        opt.step()
        losses.append(loss["total"].item())
        for key, values in parts.items():
            values.append(loss[key].item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.3 * first, (first, last, losses)  # about 4.0 -> 0.4 on this set
    for key, values in parts.items():  # every head learns, not just one
        assert sum(values[-5:]) < 0.7 * sum(values[:5]), (key, values)


def test_the_wasserstein_box_term_counts_a_pixel_off_alike_for_small_and_large_boxes():
    """NWD (perception/targets.py): 1 for equal boxes; a box one pixel off scores the same whether
    it is 6 px or 60 px, where IoU punishes the small one; a larger offset scores lower; a box
    loss that is not known is refused, naming it."""
    from torchvision.ops import box_iou

    from stagepilot.perception.targets import gaussian_wasserstein_similarity, perception_loss

    small, large = torch.tensor([[100.0, 50.0, 108.0, 56.0]]), torch.tensor([[100.0, 50.0, 180.0, 110.0]])
    shift = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert gaussian_wasserstein_similarity(small, small).item() == pytest.approx(1.0, abs=1e-3)
    nwd_small = gaussian_wasserstein_similarity(small + shift, small).item()
    nwd_large = gaussian_wasserstein_similarity(large + shift, large).item()
    assert nwd_small == pytest.approx(nwd_large, abs=1e-6)
    assert box_iou(small + shift, small).item() < 0.7 < box_iou(large + shift, large).item()
    assert gaussian_wasserstein_similarity(small + 3 * shift, small).item() < nwd_small
    net = PerceptionNet()
    images, targets = _synthetic(2)
    with pytest.raises(ValueError, match="box_loss must be one of giou, giou_nwd, got 'l1'"):
        perception_loss(net(images), targets, strides=net.strides, num_classes=len(net.classes),
                        dice_index=net.dice_index, box_loss="l1")


def test_segmentation_loss_on_every_second_pixel_teaches_the_full_resolution_mask():
    """``seg_stride=2`` (the 30-epoch recipe) samples the mask; what it teaches must hold at every pixel."""
    torch.manual_seed(0)
    net = PerceptionNet().train()
    images, targets = _synthetic(4)

    def full_res_seg(net):
        with torch.no_grad():
            loss = net.loss(net(images), targets)
        return loss["seg"].item() + loss["dice"].item()

    with torch.no_grad():
        out = net(images)
        full, sampled = net.loss(out, targets), net.loss(out, targets, seg_stride=2)
    assert sampled["seg"].item() == pytest.approx(full["seg"].item(), rel=0.05)  # a fair estimate at the start
    before = full_res_seg(net)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for step in range(30):
        i = (step * 2) % 4
        loss = net.loss(net(images[i:i + 2]), targets[i:i + 2], seg_stride=2)
        opt.zero_grad()
        loss["total"].backward()
        opt.step()
    assert full_res_seg(net) < 0.4 * before, (before, full_res_seg(net))
    with pytest.raises(ValueError, match="seg_stride"):
        net.loss(out, targets, seg_stride=0)


def test_loss_handles_an_image_without_boxes(model):
    images, targets = _synthetic(1, 96, 160)
    targets[0]["boxes"] = torch.zeros(0, 4)
    targets[0]["labels"] = torch.zeros(0, dtype=torch.long)
    out = model(images)
    for cls_loss in ("focal", "quality_focal"):
        assert torch.isfinite(model.loss(out, targets, cls_loss=cls_loss)["total"])
    with pytest.raises(ValueError, match="cls_loss"):
        model.loss(out, targets, cls_loss="varifocal")


def test_quality_focal_loss_pulls_a_score_to_its_box_iou_and_background_to_zero():
    """GFL's quality focal loss: an assigned cell's score settles at its box's IoU (not at 1, where
    focal loss puts every assigned cell), an unassigned one at 0."""
    quality = torch.tensor([[[0.9, 0.0], [0.35, 0.0], [0.0, 0.0]]])  # (B=1, P=3, C=2)
    logits = torch.zeros_like(quality, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    for _ in range(1500):
        loss = _quality_focal_loss(logits, quality)
        opt.zero_grad()
        loss.backward()
        opt.step()
    scores = logits.detach().sigmoid()
    assert scores[0, 0, 0] == pytest.approx(0.9, abs=0.02) and scores[0, 1, 0] == pytest.approx(0.35, abs=0.02)
    assert scores[0, :, 1].max() < 0.1 and scores[0, 2, 0] < 0.1


def test_quality_focal_targets_are_the_ious_of_the_assigned_cells_boxes(model):
    """The loss's class target at an assigned cell is the IoU of that cell's predicted box with its
    ground-truth box: at a cell whose logit already equals that IoU the loss has no pull."""
    images, targets = _synthetic(1, 96, 160)
    out = model(images)
    points, cls_flat, dist = model._flatten_levels(out)
    start, match = 0, []
    for stride, cls in zip(model.strides, out["cls"]):
        h, w = cls.shape[-2:]
        m, _ = model._assign(targets[0]["boxes"], targets[0]["labels"], points[start:start + h * w], h, w, stride)
        match.append(m)
        start += h * w
    match = torch.cat(match)
    pos = (match >= 0).nonzero().squeeze(1)
    d = dist[0, pos]
    pred = torch.cat([points[pos] - d[:, :2], points[pos] + d[:, 2:]], dim=1)
    iou = torch.diag(box_iou(pred, targets[0]["boxes"][match[pos]])).clamp(min=0.01)
    labels = targets[0]["labels"][match[pos]]
    # every logit at its target: background very negative, assigned cells at logit(IoU)
    logits = torch.full_like(cls_flat, -30.0)
    logits[0, pos, labels] = torch.logit(iou)
    assert model.loss({**out, "cls": _as_levels(logits, out["cls"])}, targets, cls_loss="quality_focal")["cls"] < 1e-4
    logits[0, pos, labels] = 6.0  # scores near 1, where focal loss would put them
    assert model.loss({**out, "cls": _as_levels(logits, out["cls"])}, targets, cls_loss="quality_focal")["cls"] > 0.05


def _as_levels(flat, like):
    """(B, P, C) logits back into per-level maps shaped like ``like`` (the inverse of _flatten_levels)."""
    levels, begin = [], 0
    for cls in like:
        b, c, h, w = cls.shape
        levels.append(flat[:, begin:begin + h * w].transpose(1, 2).reshape(b, c, h, w))
        begin += h * w
    return levels


def test_checkpoint_round_trip_keeps_meta_and_outputs(model, tmp_path):
    meta = {"metrics": {"mAP50": 0.1}, "training_command": "stagepilot train --epochs 1",
            "data_manifest": {"train": "data/train.json", "frames": 4}}
    path = save_checkpoint(tmp_path / "net.pt", model, meta)
    loaded, got = load_checkpoint(path)
    assert got["classes"] == list(CLASSES) and got["seg_classes"] == list(SEG_CLASSES)
    assert got["input_size"] == [H, W] and got["architecture"] == model.architecture
    assert got["metrics"] == meta["metrics"] and got["training_command"] == meta["training_command"]
    assert got["data_manifest"] == meta["data_manifest"]
    x = torch.rand(1, 3, 96, 160)
    with torch.inference_mode():
        a, b = model(x), loaded.eval()(x)
    for key in ("cls", "box"):
        assert all(torch.equal(x, y) for x, y in zip(a[key], b[key]))
    assert torch.equal(a["seg"], b["seg"])
    again, _ = load_checkpoint(path, PerceptionNet())  # into a requested model of the same shape
    assert torch.equal(again.eval()(x)["cls"][0], a["cls"][0])


def test_corrupt_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="broken.pt"):
        load_checkpoint(path)


def test_class_mismatch_names_the_file_and_the_field(model, tmp_path):
    path = save_checkpoint(tmp_path / "seven.pt", PerceptionNet(num_classes=7), {})
    with pytest.raises(ValueError, match=r"seven\.pt.*classes mismatch"):
        load_checkpoint(path, model)
    other = save_checkpoint(tmp_path / "wide.pt", PerceptionNet(width=64), {})
    with pytest.raises(CheckpointError, match=r"wide\.pt.*architecture mismatch"):
        load_checkpoint(other, model)


def test_a_grown_network_starts_as_the_checkpoint_it_grows_and_then_learns_with_its_new_blocks(tmp_path):
    torch.manual_seed(0)
    small = build_model("mtl_mbv3small_fpn96_s48_seg4_cs", input_size=(96, 160))
    for module in small.modules():  # trained-looking statistics, so eval mode is not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    path = save_checkpoint(tmp_path / "small.pt", small.eval(), {})
    grown = build_model("mtl_mbv3small_fpn96_s48r2_seg4_cs", input_size=(96, 160))
    assert grown.architecture == "mtl_mbv3small_fpn96_s48r2_seg4_cs" and len(grown.cls_res4) == 2
    grown, _ = load_grown(path, grown)
    x = torch.rand(2, 3, 96, 160)
    with torch.no_grad():
        a, b = small(x), grown.eval()(x)
    for key in ("cls", "box"):
        assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(a[key], b[key]))
    # the new blocks are not stuck at the identity: their zero scale gets a gradient
    grown.train()
    out = grown(x)
    (out["cls"][0].square().mean() + out["box"][0].square().mean()).backward()
    assert grown.cls_res4[0].bn.weight.grad.abs().sum() > 0 and grown.box_res4[1].bn.weight.grad.abs().sum() > 0
    with pytest.raises(CheckpointError, match=r"small\.pt.*does not grow"):
        load_grown(path, build_model("mtl_mbv3small_fpn64_s48r1_seg4_cs", input_size=(96, 160)))
    with pytest.raises(ValueError, match="stride-4 head"):
        build_model("mtl_mbv3small_fpn96_s8r1_seg4")


def test_batchnorm_recalibration_makes_eval_mode_match_the_batch_statistics():
    from stagepilot.perception.checkpoint import recalibrate_batchnorm
    from stagepilot.perception.network import PerceptionNet

    torch.manual_seed(0)
    model = PerceptionNet(input_size=(96, 160))
    images = torch.rand(4, 3, 96, 160)
    model.train()
    with torch.no_grad():
        train_seg = model(images)["seg"]
    assert recalibrate_batchnorm(model, [images]) == 1
    model.eval()
    with torch.no_grad():
        eval_seg = model(images)["seg"]
    # Only the unbiased-vs-biased variance differs between the two; without the
    # recalibration the fresh statistics (mean 0, var 1) give a very different output.
    fresh = PerceptionNet(input_size=(96, 160))
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k},
                          strict=False)
    fresh.eval()
    with torch.no_grad():
        stale_seg = fresh(images)["seg"]
    scale = train_seg.abs().mean()
    assert (eval_seg - train_seg).abs().mean() < 0.2 * scale
    assert (stale_seg - train_seg).abs().mean() > 3 * (eval_seg - train_seg).abs().mean()
    momenta = {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {0.1}
