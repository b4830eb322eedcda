"""The multi-task camera network: one MobileNetV3 trunk, an FPN, FCOS-style detection heads at
strides 4 and 8, and a segmentation head.

    model = build_model("mtl_mbv3small_fpn96_s48_seg4_cs")   # random init, no download
    out = model(images)                         # images (B, 3, H, W) float RGB in [0, 1]
    dets = model.decode(out, score_threshold=0.3)   # list of {"boxes", "scores", "labels", "seg"}
    losses = model.loss(out, targets, cls_loss="quality_focal")   # dict of scalars, "total" to backprop

The shipped checkpoint (perception/weights/MODEL_CARD.md, trained by
configs/training/camera640_32ep_qfl.yaml) is ``mtl_mbv3small_fpn96_s48_seg4_cs``, 0.95 M
parameters, trained from scratch, input 360x640 (H x W: the front camera's 640x360 frame as it
is), ImageNet mean/std normalisation inside the model:
- trunk: torchvision's MobileNetV3-Small ``features`` up to stride 32, without its 576-channel
  1x1 head (C2 16 ch @ s4, C3 24 ch @ s8, C4 48 ch @ s16, C5 96 ch @ s32);
- neck: a top-down FPN fused into one stride-8 map of 96 channels;
- detection: anchor-free FCOS-style heads with sigmoid class logits (vehicle, pedestrian,
  traffic_light_red / _yellow / _green, static_obstacle: a light's state is its class) and
  boxes. The stride-8 head runs on the FPN map and takes boxes from 16 px (input pixels); a
  light stride-4 head runs on the segmentation decoder's features and takes boxes up to 32 px,
  since a far car or walker a few pixels tall blurs into one stride-8 cell. Boxes are
  regressed as centre offset and size (``_cs``, see ``PerceptionNet._ltrb``);
- segmentation: a head on the stride-8 map, upsampled and fused with C2 into a stride-4 decoder
  of ``SEG4_WIDTH`` channels, 11 classes (perception/labels.py), upsampled to the input size
  when decoded.
Training targets and losses (quality focal loss in the shipped recipe, GIoU, cross-entropy plus
Dice) are in perception/targets.py, decoding in perception/decode.py, checkpoint files in
perception/checkpoint.py.

Architecture strings read ``mtl_{backbone}_fpn{width}_s{levels}[r{n}]_seg4[_cs]``: backbone
``mbv3small`` or ``mbv3large`` (C2 24 / C3 40 / C4 112 / C5 160 ch), FPN width, ``levels``
``48`` (strides 4 and 8) or ``8`` (stride 8 alone), ``r{n}`` for n residual blocks after each
stride-4 tower (more capacity where far objects are found), ``_cs`` for centre-size boxes, else FCOS's
distances to the four edges (``ltrb``). ``build_model()`` and ``PerceptionNet()`` without
arguments give ``DEFAULT_ARCHITECTURE``, the ``ltrb`` variant.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small

from stagepilot.perception.decode import decode_outputs, flatten_levels
from stagepilot.perception.labels import CLASSES, SEG_CLASSES
from stagepilot.perception.targets import DICE_CLASSES, assign, perception_loss

INPUT_SIZE = (360, 640)  # (H, W) of the front camera
STRIDE = 8  # the FPN map's stride
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_ARCH_RE = re.compile(r"^mtl_(mbv3large|mbv3small)_fpn(\d+)_s(8|48)(?:r([1-9]))?_seg4(_cs)?$")
CS_OFFSET_CELLS = 2.0  # ``_cs`` boxes: the centre lies within this many cells of the point (centre sampling: 1.5)
DEFAULT_ARCHITECTURE = "mtl_mbv3small_fpn96_s48_seg4"
# backbone -> (builder, feature slices for C2/C3/C4/C5, their channels)
BACKBONES = {
    "mbv3large": (mobilenet_v3_large, (slice(0, 4), slice(4, 7), slice(7, 13), slice(13, 16)), (24, 40, 112, 160)),
    "mbv3small": (mobilenet_v3_small, (slice(0, 2), slice(2, 4), slice(4, 9), slice(9, 12)), (16, 24, 48, 96)),
}
TRUNK_STAGES = ("c2", "c3", "c4", "c5")  # PerceptionNet attributes holding the feature slices, in order
SEG4_WIDTH = 32  # channels of the stride-4 segmentation decoder


def _conv_bn_relu(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _sep_block(c: int) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1, both with BN + ReLU: a cheap 3x3 receptive field."""
    return nn.Sequential(_conv_bn_relu(c, c, 3, groups=c), _conv_bn_relu(c, c, 1))


class _Residual(nn.Module):
    """x + BN(pointwise(ReLU(BN(depthwise 3x3(x))))), its last BN's scale and shift starting at
    zero (as ResNet's zero-gamma): a new block is the identity until it trains, so a network
    grown by it (``checkpoint.load_grown``) starts out computing what the smaller one did."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = _conv_bn_relu(c, c, 3, groups=c)
        self.pw = nn.Conv2d(c, c, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        nn.init.zeros_(self.bn.weight)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bn(self.pw(self.dw(x)))


class PerceptionNet(nn.Module):
    def __init__(self, *, num_classes: int = len(CLASSES), num_seg_classes: int = len(SEG_CLASSES),
                 backbone: str = "mbv3small", width: int = 96, input_size: tuple[int, int] = INPUT_SIZE,
                 levels: str = "48", box_param: str = "ltrb", residual4: int = 0) -> None:
        super().__init__()
        self.classes = CLASSES if num_classes == len(CLASSES) else tuple(f"class_{i}" for i in range(num_classes))
        self.seg_classes = (SEG_CLASSES if num_seg_classes == len(SEG_CLASSES)
                            else tuple(f"seg_{i}" for i in range(num_seg_classes)))
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r} (one of {', '.join(BACKBONES)})")
        if levels not in ("8", "48"):
            raise ValueError(f"unknown detection levels {levels!r} (8 or 48)")
        if box_param not in ("ltrb", "cs"):
            raise ValueError(f"unknown box parametrisation {box_param!r} (ltrb or cs)")
        if residual4 and levels != "48":
            raise ValueError("residual blocks at stride 4 need the stride-4 head (levels 48)")
        self.box_param = box_param
        self.residual4 = residual4
        self.backbone = backbone
        self.width = width
        self.levels = levels
        self.input_size = tuple(input_size)
        self.stride = STRIDE
        builder, (s2, s3, s4, s5), (ch2, ch3, ch4, ch5) = BACKBONES[backbone]
        feats = builder(weights=None).features  # ImageNet weights, if any: checkpoint.load_backbone_weights
        self.c2 = feats[s2]  # (B, ch2, H/4, W/4)
        self.c3 = feats[s3]  # (B, ch3, H/8, W/8)
        self.c4 = feats[s4]  # (B, ch4, H/16, W/16)
        self.c5 = feats[s5]  # (B, ch5, H/32, W/32)
        self.lat3 = _conv_bn_relu(ch3, width, 1)
        self.lat4 = _conv_bn_relu(ch4, width, 1)
        self.lat5 = _conv_bn_relu(ch5, width, 1)
        self.smooth = _sep_block(width)
        self.cls_tower = _sep_block(width)
        self.box_tower = _sep_block(width)
        self.cls_out = nn.Conv2d(width, num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(width, 4, 3, padding=1)
        self.seg_tower = _sep_block(width)
        self.seg_reduce = _conv_bn_relu(width, SEG4_WIDTH, 1)
        self.lat2 = _conv_bn_relu(ch2, SEG4_WIDTH, 1)
        self.seg_fuse = _sep_block(SEG4_WIDTH)
        self.seg_out = nn.Conv2d(SEG4_WIDTH, num_seg_classes, 1)
        if levels == "48":  # stride-4 detection on the decoder features the segmentation uses
            self.cls_tower4 = _sep_block(SEG4_WIDTH)
            self.box_tower4 = _sep_block(SEG4_WIDTH)
            self.cls_out4 = nn.Conv2d(SEG4_WIDTH, num_classes, 3, padding=1)
            self.box_out4 = nn.Conv2d(SEG4_WIDTH, 4, 3, padding=1)
            # more stride-4 capacity (``r{n}``): n residual blocks after each stride-4 tower
            self.cls_res4 = nn.Sequential(*(_Residual(SEG4_WIDTH) for _ in range(residual4)))
            self.box_res4 = nn.Sequential(*(_Residual(SEG4_WIDTH) for _ in range(residual4)))
        dice = [self.seg_classes.index(c) for c in DICE_CLASSES if c in self.seg_classes]
        self.register_buffer("dice_index", torch.tensor(dice, dtype=torch.long), persistent=False)
        for cls_out in (self.cls_out, getattr(self, "cls_out4", None)):
            if cls_out is not None:
                nn.init.normal_(cls_out.weight, std=0.01)
                nn.init.constant_(cls_out.bias, -math.log((1 - 0.01) / 0.01))  # prior 0.01 for focal loss
        # torchvision's MobileNetV3 tracks BatchNorm statistics with momentum 0.01, which lags far
        # behind the weights on a short schedule and breaks eval mode; 0.1 keeps up.
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.1
        for box_out in (self.box_out, getattr(self, "box_out4", None)):
            if box_out is not None:
                nn.init.normal_(box_out.weight, std=0.01)
                nn.init.zeros_(box_out.bias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def architecture(self) -> str:
        suffix = "_cs" if self.box_param == "cs" else ""
        residual = f"r{self.residual4}" if self.residual4 else ""
        return f"mtl_{self.backbone}_fpn{self.width}_s{self.levels}{residual}_seg4{suffix}"

    @property
    def strides(self) -> tuple[int, ...]:
        """Detection strides, in the order of the ``cls`` / ``box`` output lists."""
        return (STRIDE,) if self.levels == "8" else (4, STRIDE)

    def forward(self, images: Tensor) -> dict[str, Any]:
        """images (B, 3, H, W) float RGB in [0, 1] -> raw head outputs: ``cls`` and ``box``, lists with
        one map per detection stride (``strides``), and ``seg`` at stride 4."""
        x = (images - self.mean) / self.std            # (B, 3, H, W)
        c2 = self.c2(x)                                # (B, 24, H/4, W/4)    (16 for mbv3small)
        c3 = self.c3(c2)                               # (B, 40, H/8, W/8)    (24)
        c4 = self.c4(c3)                               # (B, 112, H/16, W/16) (48)
        c5 = self.c5(c4)                               # (B, 160, H/32, W/32) (96)
        p4 = self.lat4(c4) + F.interpolate(self.lat5(c5), size=c4.shape[-2:], mode="nearest")  # (B, w, H/16, W/16)
        p3 = self.lat3(c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest")            # (B, w, H/8, W/8)
        p3 = self.smooth(p3)                           # (B, w, H/8, W/8)
        cls = self.cls_out(self.cls_tower(p3))         # (B, C, H/8, W/8) logits
        ltrb = self._ltrb(self.box_out(self.box_tower(p3)), self.stride)  # (B, 4, H/8, W/8) px
        s3 = self.seg_reduce(self.seg_tower(p3))       # (B, 32, H/8, W/8)
        s2 = self.lat2(c2) + F.interpolate(s3, size=c2.shape[-2:], mode="bilinear", align_corners=False)
        f2 = self.seg_fuse(s2)                         # (B, 32, H/4, W/4)
        seg = self.seg_out(f2)                         # (B, K, H/4, W/4) logits
        if self.levels == "8":
            return {"cls": [cls], "box": [ltrb], "seg": seg, "image_size": tuple(images.shape[-2:])}
        cls4 = self.cls_out4(self.cls_res4(self.cls_tower4(f2)))  # (B, C, H/4, W/4) logits
        ltrb4 = self._ltrb(self.box_out4(self.box_res4(self.box_tower4(f2))), 4)  # (B, 4, H/4, W/4) px
        return {"cls": [cls4, cls], "box": [ltrb4, ltrb], "seg": seg, "image_size": tuple(images.shape[-2:])}

    def _ltrb(self, raw: Tensor, stride: int) -> Tensor:
        """Box head output (B, 4, h, w) -> distances from each cell's centre to the box's left, top,
        right and bottom edges (B, 4, h, w) px, float32.

        ``ltrb``: softplus(raw) * stride, so every box contains its cell's centre. A box narrower
        than a cell whose centre cell is assigned to it (targets.assign) may not, and is then
        learned too wide. ``cs``: the box centre is offset from the cell's centre by at most
        ``CS_OFFSET_CELLS`` cells (tanh) and its width and height are softplus(raw) * stride, so a
        box may lie beside the point (negative distances) and still has a positive size."""
        raw = raw.float()
        if self.box_param == "ltrb":
            return F.softplus(raw) * stride
        offset = torch.tanh(raw[:, :2]) * (CS_OFFSET_CELLS * stride)  # (B, 2, h, w) centre - point, x and y
        half = F.softplus(raw[:, 2:]) * (0.5 * stride)                # (B, 2, h, w) half width, half height
        return torch.cat([half - offset, half + offset], dim=1)       # l, t, r, b

    # ---- decoding and training, by the modules that own them ----------------------------------
    @torch.no_grad()
    def decode(self, outputs: dict[str, Any], score_threshold: float = 0.3, *, nms_iou: float = 0.5,
               max_candidates: int = 1000, max_detections: int = 100, with_seg: bool = True,
               seg_stride: int = 1) -> list[dict[str, Tensor]]:
        """Raw outputs -> per image {"boxes" (N, 4) xyxy px inside the image, "scores" (N,), "labels" (N,),
        "seg" (H, W) int64 class map}: perception/decode.py ``decode_outputs``."""
        return decode_outputs(outputs, self.strides, score_threshold, nms_iou=nms_iou,
                              max_candidates=max_candidates, max_detections=max_detections,
                              with_seg=with_seg, seg_stride=seg_stride)

    def loss(self, outputs: dict[str, Any], targets: list[dict[str, Tensor]], *,
             seg_stride: int = 1, cls_loss: str = "focal", box_loss: str = "giou",
             assignment: str = "centre") -> dict[str, Tensor]:
        """{"cls", "box", "seg", "dice", "total"}: perception/targets.py ``perception_loss``."""
        return perception_loss(outputs, targets, strides=self.strides, num_classes=len(self.classes),
                               dice_index=self.dice_index, seg_stride=seg_stride, cls_loss=cls_loss,
                               box_loss=box_loss, assignment=assignment)

    def _flatten_levels(self, outputs: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """All cells of all levels: points (P, 2) px, class logits (B, P, C), ltrb (B, P, 4)."""
        return flatten_levels(outputs, self.strides)

    def _assign(self, boxes: Tensor, labels: Tensor, points: Tensor, h: int, w: int,
                stride: int = STRIDE) -> tuple[Tensor, Tensor]:
        """Matched box index per point (P,) (-1: background) and class target (P, C) on one level."""
        return assign(boxes, labels, points, h, w, stride, strides=self.strides, num_classes=len(self.classes))


def build_model(architecture: str = DEFAULT_ARCHITECTURE, **kwargs: Any) -> PerceptionNet:
    """A network from its architecture string (module docstring); ``kwargs`` go to PerceptionNet."""
    match = _ARCH_RE.match(architecture)
    if not match:
        raise ValueError(f"unknown architecture {architecture!r} (expected like 'mtl_mbv3large_fpn64_s48_seg4')")
    return PerceptionNet(backbone=match.group(1), width=int(match.group(2)), levels=match.group(3),
                         residual4=int(match.group(4) or 0), box_param="cs" if match.group(5) else "ltrb", **kwargs)
