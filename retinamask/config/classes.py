"""The classes of a config: names and category ids of labels 1..K (torch-free)."""

from retinamask.formats.coco_classes import COCO_CLASS_NAMES, default_category_ids


def category_ids_from_config(cfg):
    """The category id of each label 1..K (label - 1 indexes it): cfg.CATEGORY_IDS, else COCO's ids for
    the 80 COCO classes, else 1..K."""
    num_foreground = cfg.RETINANET.NUM_CLASSES - 1
    if cfg.CATEGORY_IDS:
        ids = tuple(int(i) for i in cfg.CATEGORY_IDS)
        if len(ids) != num_foreground:
            from retinamask.core.errors import ConfigError

            raise ConfigError(f"CATEGORY_IDS has {len(ids)} ids but RETINANET.NUM_CLASSES - 1 = {num_foreground}")
        return ids
    return default_category_ids(class_names_from_config(cfg))


def class_names_from_config(cfg):
    """Foreground class names in label order (label 1 first): cfg.CLASS_NAMES, else COCO's 80
    (when RETINANET.NUM_CLASSES is 81), else generic ``class_<label>``."""
    num_foreground = cfg.RETINANET.NUM_CLASSES - 1
    if cfg.CLASS_NAMES:
        names = tuple(cfg.CLASS_NAMES)
        if len(names) != num_foreground:
            from retinamask.core.errors import ConfigError

            raise ConfigError(f"CLASS_NAMES has {len(names)} names but RETINANET.NUM_CLASSES - 1 = {num_foreground}")
        return names
    if num_foreground == len(COCO_CLASS_NAMES):
        return COCO_CLASS_NAMES
    return tuple(f"class_{i}" for i in range(1, num_foreground + 1))
