"""Training data: a COCO-format instance segmentation dataset, the train transform, batching.

* ``CocoTrainDataset`` reads images + ``instances_*.json`` with pycocotools, drops crowd
  annotations and images without any annotation (as the original does for training),
  and maps the sorted category ids to contiguous labels 1..K.
* ``TrainTransform``: resize with the test-time geometry (``upstream_test_size``) at a
  min size drawn from ``INPUT.MIN_SIZE_TRAIN`` (long side capped at ``MAX_SIZE_TRAIN``),
  random horizontal flip, BGR 0..255 minus ``PIXEL_MEAN`` (divided by ``PIXEL_STD``).
* ``IterationBatchSampler``: the batches of every iteration as a pure function of
  (seed, iteration): shuffled epochs, aspect-ratio grouping, one random seed per sample
  for the transform. A run resumed at iteration i sees exactly the batches and
  augmentations an uninterrupted run would have, whatever the number of workers.
* ``collate``: zero-pads the images bottom/right to a common size divisible by
  ``DATALOADER.SIZE_DIVISIBILITY``.

Targets (one dict per image): ``boxes`` float32 [G, 4] xyxy in input pixels with the +1
convention (x2 = x + w - 1), ``labels`` int64 [G] in 1..K, ``masks`` uint8 [G, h, w] over
the resized image (not padded).
"""

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from retinamask.core.errors import ConfigError, InputError
from retinamask.data.transforms import PIXEL_MEAN, PIXEL_STD, normalize_bgr, resize_rgb, upstream_test_size
from retinamask.formats.coco_layout import annotation_file


class CocoTrainDataset(torch.utils.data.Dataset):
    """One COCO split for training.

    ``dataset[index]`` or ``dataset[(index, sample_seed)]`` (what ``IterationBatchSampler``
    yields) -> (image float32 [3, h, w] normalised BGR, target dict, index). Without a
    seed the transform's random choices are seeded by the index.
    """

    def __init__(self, image_dir, ann_file, transform=None, remove_images_without_annotations=True):
        from pycocotools.coco import COCO

        self.image_dir = Path(image_dir)
        ann_file = Path(ann_file)
        if not ann_file.is_file():
            raise InputError("annotation file not found", ann_file)
        if not self.image_dir.is_dir():
            raise InputError("image folder not found", self.image_dir)
        try:
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):
                self.coco = COCO(str(ann_file))
        except Exception as e:  # pycocotools raises bare asserts / JSON errors
            raise InputError(f"not a readable COCO annotation file ({type(e).__name__}: {e})", ann_file) from None
        if not self.coco.dataset.get("categories"):
            raise InputError("no categories in the annotation file", ann_file)
        self.category_ids = sorted(c["id"] for c in self.coco.dataset["categories"])
        self.class_names = tuple(self.coco.cats[i]["name"] for i in self.category_ids)
        self.label_of_category = {cat_id: label for label, cat_id in enumerate(self.category_ids, start=1)}
        ids = sorted(self.coco.imgs)
        if remove_images_without_annotations:
            ids = [i for i in ids if any(not a.get("iscrowd", 0) for a in self.coco.imgToAnns.get(i, []))]
        if not ids:
            raise InputError("no image with a (non-crowd) annotation", ann_file)
        self.ids = ids
        self.transform = transform

    def __len__(self):
        return len(self.ids)

    def image_hw(self, index):
        """(height, width) of an image as the annotation file records it."""
        info = self.coco.imgs[self.ids[index]]
        return int(info["height"]), int(info["width"])

    def load(self, index):
        """Untransformed sample: (RGB uint8 [H, W, 3], boxes float32 [G, 4], labels int64 [G],
        masks uint8 [G, H, W])."""
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as img:
                image = np.asarray(img.convert("RGB"))
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read image ({type(e).__name__}: {e})", path) from None
        height, width = image.shape[:2]
        annotations = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes, labels, masks = [], [], []
        for a in annotations:
            x, y, w, h = a["bbox"]
            # the original's clip_to_image(remove_empty=True) on +1 boxes
            x1, y1 = min(max(x, 0), width - 1), min(max(y, 0), height - 1)
            x2, y2 = min(max(x + w - 1, 0), width - 1), min(max(y + h - 1, 0), height - 1)
            if x2 <= x1 or y2 <= y1:
                continue
            mask = self.coco.annToMask(a)
            if mask.shape != (height, width):
                raise InputError(f"annotation {a['id']}: mask size {mask.shape} != image size {(height, width)}", path)
            boxes.append([x1, y1, x2, y2])
            labels.append(self.label_of_category[a["category_id"]])
            masks.append(mask)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64)
        masks = np.stack(masks) if masks else np.zeros((0, height, width), np.uint8)
        return image, boxes, labels, masks

    def __getitem__(self, item):
        index, sample_seed = item if isinstance(item, tuple) else (item, item)
        image, boxes, labels, masks = self.load(index)
        if self.transform is not None:
            image, boxes, masks = self.transform(image, boxes, masks, np.random.default_rng(sample_seed))
        else:
            image = torch.from_numpy(normalize_bgr(image))
            boxes, masks = torch.from_numpy(boxes), torch.from_numpy(masks)
        return image, {"boxes": boxes, "labels": torch.from_numpy(labels), "masks": masks}, index


class TrainTransform:
    """(RGB uint8 [H, W, 3], boxes [G, 4], masks uint8 [G, H, W], numpy Generator) ->
    (float32 tensor [3, h, w] normalised BGR, boxes tensor [G, 4], masks uint8 tensor [G, h, w]).

    Boxes are scaled by (w / W, h / H) like the original's ``BoxList.resize`` (so that the
    inverse scaling at inference gives back the same boxes); masks are resized bilinearly
    (antialiased, like Pillow's image resize) and thresholded at 0.5.
    """

    def __init__(self, min_sizes, max_size, flip_prob=0.5, mean=PIXEL_MEAN, std=PIXEL_STD):
        self.min_sizes = tuple(int(s) for s in min_sizes)
        self.max_size = int(max_size)
        self.flip_prob = float(flip_prob)
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(self, image, boxes, masks, rng):
        height, width = image.shape[:2]
        min_size = self.min_sizes[int(rng.integers(len(self.min_sizes)))]
        new_h, new_w = upstream_test_size(height, width, min_size, self.max_size)
        flip = rng.uniform() < self.flip_prob
        image = resize_rgb(image, (new_h, new_w))
        boxes = torch.from_numpy(boxes) * torch.tensor([new_w / width, new_h / height] * 2, dtype=torch.float32)
        masks = torch.from_numpy(masks)
        if masks.shape[0] and (new_h, new_w) != (height, width):
            resized = F.interpolate(
                masks[:, None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
            )
            masks = (resized[:, 0] >= 0.5).to(torch.uint8)
        elif not masks.shape[0]:
            masks = masks.new_zeros((0, new_h, new_w))
        if flip:
            image = image[:, ::-1]
            boxes = torch.stack((new_w - 1 - boxes[:, 2], boxes[:, 1], new_w - 1 - boxes[:, 0], boxes[:, 3]), dim=1)
            masks = masks.flip(-1)
        return torch.from_numpy(normalize_bgr(image, self.mean, self.std)), boxes, masks.contiguous()


def collate(batch, size_divisibility=32):
    """[(image [3, h_i, w_i], target, index)] -> (images [N, 3, H, W] zero-padded bottom/right,
    image_sizes [(h_i, w_i)], targets, indices); H, W multiples of ``size_divisibility`` (if > 0)."""
    images, targets, indices = zip(*batch)
    max_h = max(im.shape[1] for im in images)
    max_w = max(im.shape[2] for im in images)
    if size_divisibility > 0:
        max_h = int(math.ceil(max_h / size_divisibility) * size_divisibility)
        max_w = int(math.ceil(max_w / size_divisibility) * size_divisibility)
    padded = images[0].new_zeros((len(images), 3, max_h, max_w))
    for out, im in zip(padded, images):
        out[:, : im.shape[1], : im.shape[2]].copy_(im)
    image_sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    return padded, image_sizes, list(targets), list(indices)


class Collate:
    """Picklable ``collate`` with a fixed size divisibility (for DataLoader workers)."""

    def __init__(self, size_divisibility=32):
        self.size_divisibility = size_divisibility

    def __call__(self, batch):
        return collate(batch, self.size_divisibility)


class IterationBatchSampler(torch.utils.data.Sampler):
    """Batches for iterations ``start_iter .. max_iter - 1``: lists of (dataset index, sample seed).

    Epoch e is a permutation of the dataset drawn from (seed, e). With ``group_flags``
    (one bool per image, e.g. landscape or not) each batch holds images of one group, in
    the order of the permutation, as the original's aspect-ratio grouping does; the
    leftovers of the two groups fill mixed batches at the end of the epoch, and a final
    incomplete batch is dropped. Everything is a function of (seed, iteration) alone.
    """

    def __init__(self, dataset_size, batch_size, max_iter, start_iter=0, seed=0, group_flags=None):
        if dataset_size < batch_size:
            raise ValueError(f"the dataset has {dataset_size} images, fewer than a batch ({batch_size})")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.start_iter = start_iter
        self.seed = seed
        self.group_flags = None if group_flags is None else np.asarray(group_flags, dtype=bool)

    def __len__(self):
        return max(self.max_iter - self.start_iter, 0)

    def epoch_batches(self, epoch):
        """The batches (lists of dataset indices) of one epoch."""
        order = np.random.default_rng([self.seed, epoch, 0x5A]).permutation(self.dataset_size)
        b = self.batch_size
        if self.group_flags is None:
            return [order[i : i + b].tolist() for i in range(0, len(order) - b + 1, b)]
        position = np.empty(self.dataset_size, dtype=np.int64)
        position[order] = np.arange(self.dataset_size)
        batches, leftovers = [], []
        for flag in (True, False):
            members = order[self.group_flags[order] == flag]
            full = len(members) // b * b
            batches += [(int(position[members[i]]), members[i : i + b].tolist()) for i in range(0, full, b)]
            leftovers.append(members[full:])
        batches = [batch for _, batch in sorted(batches, key=lambda t: t[0])]
        rest = np.concatenate(leftovers)
        rest = rest[np.argsort(position[rest], kind="stable")]
        batches += [rest[i : i + b].tolist() for i in range(0, len(rest) - b + 1, b)]
        return batches

    def sample_seed(self, iteration, slot):
        return int(np.random.SeedSequence([self.seed, iteration, slot, 0xA5]).generate_state(1)[0])

    def __iter__(self):
        iteration, epoch = 0, 0
        while iteration < self.max_iter:
            batches = self.epoch_batches(epoch)
            if iteration + len(batches) <= self.start_iter:  # skip whole epochs before the start
                iteration += len(batches)
                epoch += 1
                continue
            for batch in batches:
                if iteration >= self.max_iter:
                    return
                if iteration >= self.start_iter:
                    yield [(index, self.sample_seed(iteration, slot)) for slot, index in enumerate(batch)]
                iteration += 1
            epoch += 1


def build_train_dataset(cfg, data_dir, split="train"):
    """``DIR/<split>`` + ``DIR/annotations/instances_<split>.json`` with the train transform of ``cfg``."""
    if not cfg.INPUT.TO_BGR255:
        raise ConfigError("INPUT.TO_BGR255 False (RGB 0..1 input) is not supported for training")
    data_dir = Path(data_dir)
    transform = TrainTransform(
        cfg.INPUT.MIN_SIZE_TRAIN,
        cfg.INPUT.MAX_SIZE_TRAIN,
        cfg.INPUT.HORIZONTAL_FLIP_PROB_TRAIN,
        cfg.INPUT.PIXEL_MEAN,
        cfg.INPUT.PIXEL_STD,
    )
    return CocoTrainDataset(data_dir / split, annotation_file(data_dir, split), transform)


def build_train_loader(cfg, dataset, max_iter, start_iter=0, seed=0, num_workers=None):
    """DataLoader over ``IterationBatchSampler``: yields (images, image_sizes, targets, indices)."""
    group_flags = None
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        group_flags = [h <= w for h, w in (dataset.image_hw(i) for i in range(len(dataset)))]
    sampler = IterationBatchSampler(len(dataset), cfg.SOLVER.IMS_PER_BATCH, max_iter, start_iter, seed, group_flags)
    workers = cfg.DATALOADER.NUM_WORKERS if num_workers is None else num_workers
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=Collate(cfg.DATALOADER.SIZE_DIVISIBILITY),
        prefetch_factor=2 if workers > 0 else None,
        # its own generator: worker seeds must not consume the global RNG (exact resume)
        generator=torch.Generator().manual_seed(seed),
    )


__all__ = [
    "CocoTrainDataset",
    "Collate",
    "IterationBatchSampler",
    "TrainTransform",
    "build_train_dataset",
    "build_train_loader",
    "collate",
]
