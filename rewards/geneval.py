"""GenEval's detector and colour classifier through transformers, and the reward on them.

- Detection: Mask2Former trained on COCO instance segmentation
  (`Mask2FormerForUniversalSegmentation`; default `facebook/mask2former-swin-small-coco-instance`,
  the Swin-S model family GenEval runs through mmdet). The instance read-out is mmdet's:
  class scores of every (query, class) pair, the top 100, each mask the query's sigmoid > 0.5
  at the image's size, score = class score × mean mask probability inside the mask, box =
  the mask's extent. The 80 labels are taken in COCO order, as GenEval indexes them.
- Colour: CLIP ViT-L/14 (`openai/clip-vit-large-patch14`) zero-shot over the ten colours
  with GenEval's three templates (text embeddings averaged per colour), on the box crop
  with the object's mask pasted onto a #999 background.

The rules themselves live in `tasks/geneval_rules.py`. GenEval's original backends are
optional: `--detector mmdet:CONFIG:CHECKPOINT` (mmdet and a compiled mmcv, which does not
build against current torch on every machine) and `--clip open_clip:ViT-L-14:openai`
(the `openclip` extra, which pulls torchvision). Both load the pickled checkpoints
GenEval's own code loads; the default transformers path loads safetensors.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from flowarena.core.hub import load_pretrained
from flowarena.rewards.base import Reward, RewardError, RewardOutput, register_reward
from flowarena.rewards.judge import to_pil
from flowarena.rewards.pickscore import ClipScorer
from flowarena.tasks.geneval_rules import COLORS, Detection, class_names, evaluate, keep_detections

DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")
TOP_K = 100  # mmdet's Mask2Former test setting (max_per_image)


class Detector:
    """`detect(images) -> [{class: [Detection]}]`, every detection (thresholds come later)."""

    def __init__(self, source: str = DEFAULT_DETECTOR, device: str = "cpu", batch_size: int = 8):
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        how = "give a local copy with --detector DIR"
        what = f"GenEval detector {source}"
        self.device, self.batch_size = torch.device(device), batch_size
        self.processor = load_pretrained(AutoImageProcessor.from_pretrained, source, what, RewardError, how)
        self.model = load_pretrained(Mask2FormerForUniversalSegmentation.from_pretrained, source, what,
                                     RewardError, how, weights=True).to(self.device).eval()
        if self.model.config.num_labels != 80:
            raise RewardError(f"{what} has {self.model.config.num_labels} labels, not COCO's 80")
        self.names = class_names()

    @torch.no_grad()
    def detect(self, images: list[Image.Image]) -> list[dict[str, list[Detection]]]:
        out = []
        for lo in range(0, len(images), self.batch_size):
            batch = images[lo:lo + self.batch_size]
            inputs = self.processor(images=batch, return_tensors="pt").to(self.device)
            res = self.model(pixel_values=inputs["pixel_values"], pixel_mask=inputs.get("pixel_mask"))
            for b, image in enumerate(batch):
                valid = inputs["pixel_mask"][b] if "pixel_mask" in inputs else None
                out.append(self._instances(res.class_queries_logits[b], res.masks_queries_logits[b],
                                           valid, image.size))
        return out

    def _instances(self, class_logits: Tensor, mask_logits: Tensor, valid: Tensor | None,
                   size: tuple[int, int]) -> dict[str, list[Detection]]:
        scores = class_logits.float().softmax(-1)[:, :-1]  # drop the "no object" class
        n_classes = scores.shape[1]
        top, idx = scores.flatten().topk(min(TOP_K, scores.numel()))
        query, label = idx // n_classes, idx % n_classes
        masks = mask_logits.float()[query][None]  # [1, K, h, w] at a quarter of the padded input
        h_in, w_in = (valid.shape if valid is not None else masks.shape[-2:])
        masks = torch.nn.functional.interpolate(masks, size=(h_in, w_in), mode="bilinear",
                                                align_corners=False)
        if valid is not None:  # crop the processor's padding before going back to the image size
            masks = masks[..., : int(valid.any(1).sum()), : int(valid.any(0).sum())]
        w, h = size
        probs = torch.nn.functional.interpolate(masks, size=(h, w), mode="bilinear",
                                                align_corners=False)[0].sigmoid()
        binary = probs > 0.5
        mask_score = (probs * binary).flatten(1).sum(1) / binary.flatten(1).sum(1).clamp(min=1)
        final = (top * mask_score).cpu().numpy()
        detected: dict[str, list[Detection]] = {}
        for k in range(len(final)):
            m = binary[k].cpu().numpy()
            ys, xs = np.nonzero(m)
            if len(xs) == 0:
                continue
            box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            detected.setdefault(self.names[int(label[k])], []).append(Detection(box, float(final[k]), m))
        return detected


def _backend_spec(source: str, usage: str) -> list[str]:
    """"mmdet:a.py:b.pth" -> ["a.py", "b.pth"], checked against `usage` ("mmdet:CONFIG:CHECKPOINT")."""
    spec = source.split(":")[1:]
    if len(spec) != usage.count(":") or not all(spec):
        raise RewardError(f"{source!r}: write the backend as {usage}")
    return spec


class MMDetDetector:
    """GenEval's own detector through mmdet 2.x or 3.x: `mmdet:CONFIG:CHECKPOINT`."""

    def __init__(self, source: str, device: str = "cpu"):
        config, checkpoint = _backend_spec(source, "mmdet:CONFIG:CHECKPOINT")
        try:
            from mmdet.apis import inference_detector, init_detector
        except ImportError:
            raise RewardError("the mmdet detector backend needs mmdet with a compiled mmcv; the default "
                              "detector (transformers' Mask2Former) needs neither") from None
        self.model, self.infer = init_detector(config, checkpoint, device=device), inference_detector
        self.names = class_names()

    def detect(self, images: list[Image.Image]) -> list[dict[str, list[Detection]]]:
        # mmdet reads images as mmcv does, BGR arrays
        return [mmdet_instances(self.infer(self.model, np.asarray(im)[:, :, ::-1].copy()), self.names)
                for im in images]


def mmdet_instances(result, names: list[str]) -> dict[str, list[Detection]]:
    """mmdet's output as detections: 3.x's `DetDataSample` (`pred_instances`: bboxes, scores,
    labels, masks) or 2.x's `(bbox, segm)`, per class an [N, 5] array and N masks (GenEval's)."""
    out: dict[str, list[Detection]] = {}
    if hasattr(result, "pred_instances"):
        inst = result.pred_instances
        masks = inst.masks.cpu().numpy() if "masks" in inst else None
        for k, (b, sc, lab) in enumerate(zip(inst.bboxes.cpu().numpy(), inst.scores.cpu().numpy(),
                                             inst.labels.cpu().numpy())):
            out.setdefault(names[int(lab)], []).append(
                Detection(tuple(float(v) for v in b[:4]), float(sc), None if masks is None else masks[k]))
        return out
    bbox, segm = result if isinstance(result, tuple) else (result, None)
    for index, name in enumerate(names):
        for j, row in enumerate(bbox[index]):
            mask = None if segm is None else np.asarray(segm[index][j], dtype=bool)
            out.setdefault(name, []).append(Detection(tuple(float(v) for v in row[:4]), float(row[4]), mask))
    return out


class OpenClipScorer:
    """GenEval's own CLIP through open_clip: `open_clip:ARCH:PRETRAINED` (e.g. ViT-L-14:openai)."""

    def __init__(self, source: str, device: str = "cpu"):
        arch, pretrained = _backend_spec(source, "open_clip:ARCH:PRETRAINED")
        try:
            import open_clip
        except ImportError:
            raise RewardError("the open_clip colour backend needs the openclip extra "
                              "(pip install -e '.[openclip]', which pulls torchvision)") from None
        self.device = torch.device(device)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained,
                                                                               device=self.device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)

    @torch.no_grad()
    def embed_images(self, images) -> Tensor:
        pix = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_image(pix).float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> Tensor:
        tok = self.tokenizer(texts).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_text(tok).float(), dim=-1)


class ColourClassifier:
    """GenEval's colour protocol: CLIP zero-shot on the crop with the mask on a #999 ground."""

    def __init__(self, source: str = DEFAULT_CLIP, device: str = "cpu"):
        self.clip = (OpenClipScorer(source, device) if source.startswith("open_clip:") else
                     ClipScorer(source, source, "GenEval colour model", "give a local copy with --clip DIR",
                                device))
        self._classifiers: dict[str, Tensor] = {}

    def _classifier(self, cls: str) -> Tensor:
        if cls not in self._classifiers:
            rows = []
            for c in COLORS:
                e = self.clip.embed_texts([t.format(c=c, cls=cls) for t in TEMPLATES]).mean(0)
                rows.append(e / e.norm())
            self._classifiers[cls] = torch.stack(rows)
        return self._classifiers[cls]

    @staticmethod
    def crop(image: Image.Image, det: Detection) -> Image.Image:
        if det.mask is not None:
            blank = Image.new("RGB", image.size, color="#999")
            image = Image.composite(image, blank, Image.fromarray(det.mask.astype(np.uint8) * 255))
        return image.crop(tuple(int(round(v)) for v in det.box))

    def __call__(self, image: Image.Image, cls: str, dets: list[Detection]) -> list[str]:
        feats = self.clip.embed_images([self.crop(image, d) for d in dets])
        return [COLORS[int(i)] for i in (100 * feats @ self._classifier(cls).T).argmax(1)]


class GenEvalScorer:
    """Detector + colour classifier + the rules: `score(images, records)` -> (correct, partial)."""

    def __init__(self, detector: str = DEFAULT_DETECTOR, clip: str = DEFAULT_CLIP, device: str = "cpu"):
        self.detector = (MMDetDetector(detector, device) if detector.startswith("mmdet:") else
                         Detector(detector, device))
        self.colours = ColourClassifier(clip, device)

    def score(self, images, records: list[dict]) -> tuple[list[bool], list[float]]:
        pils = [im if isinstance(im, Image.Image) else to_pil(im) for im in images]
        correct, partial = [], []
        for image, rec, dets in zip(pils, records, self.detector.detect(pils)):
            ok, credit, _ = evaluate(rec, keep_detections(dets, rec["tag"]),
                                     lambda cls, ds, image=image: self.colours(image, cls, ds))
            correct.append(ok)
            partial.append(credit)
        return correct, partial


@register_reward("geneval")
class GenEvalReward(Reward):
    """GenEval with partial credit (flow_grpo's training reward), in [0, 1]; the prompt records
    must be GenEval metadata (`tag`, `include`, `exclude`); `strict=True` gives pass / fail."""
    record_field = "include"


    def __init__(self, detector: str = DEFAULT_DETECTOR, clip: str = DEFAULT_CLIP, strict: bool = False,
                 device: str = "cpu"):
        self.strict = strict
        self.scorer = GenEvalScorer(detector, clip, device)

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        if metadata is None or len(metadata) != len(images) or not all("include" in m for m in metadata):
            raise RewardError("geneval needs GenEval metadata (tag, include) for every image")
        correct, partial = self.scorer.score(images, metadata)
        scores = [float(c) for c in correct] if self.strict else partial
        return RewardOutput(torch.tensor(scores, dtype=torch.float32), {"correct": correct})
