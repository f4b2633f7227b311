"""The model side of ``audit finetune`` (:mod:`auditor.pipeline.finetune`): its options, the
classifier on a frozen pretrained backbone (:func:`build`: backbone, preprocessing, augmentation
layers, head) and which backbone layers the fine-tuning phase trains (:func:`unfreeze_top`).
Keras is imported inside the functions that use it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from auditor.embed.backbones import quiet_tensorflow
from auditor.pipeline.finetune_data import FinetuneError

AUGMENTATIONS = ("flip", "rotation", "zoom", "translation", "contrast", "brightness")


#: Here, not in finetune.py (which imports this module): the model is built from them.
@dataclass
class FinetuneOptions:
    epochs: int = 10  # per phase (early stopping may end a phase sooner)
    unfreeze: int = 3  # top blocks trained in phase 2 (0: phase 2 skipped)
    learning_rate: float = 1e-3  # phase 1; phase 2 uses a tenth of it
    image_size: int = 224
    batch_size: int = 32
    augment: tuple[str, ...] = AUGMENTATIONS  # empty: no augmentation
    dropout: float = 0.2
    l2: float = 1e-4
    patience: int = 3
    seed: int = 0
    val_fraction: float = 0.2  # carved from train (stratified) when there is no val split
    #: classes are weighed equally (inverse frequency) when the largest class has more than this
    #: many times the images of the smallest
    balance_above: float = 1.5
    backbone: str = "efficientnet-lite0"  # or a keras.applications name (needs --weights offline)
    weights: str | None = None  # keras.applications weights: a local file, "imagenet" (download) or "none"
    #: search learning_rate, l2, dropout and unfreeze first (auditor.pipeline.tune), then train with the winner
    tune: bool = False
    trials: int = 8  # head settings tried (the fine-tuning trials come on top: TOP_HEADS x unfreeze choices)
    budget_minutes: float | None = None  # wall-clock limit of the search (None: none)


def build(num_classes: int, options: FinetuneOptions):
    """(model, backbone): the classifier on a frozen pretrained backbone (EfficientNet-Lite0
    with its packaged ImageNet weights by default, or a ``keras.applications`` model)."""
    import keras

    backbone, preprocess = _base(options)
    backbone.trainable = False
    inputs = keras.Input((options.image_size, options.image_size, 3), name="image")
    x = inputs
    if options.augment:
        x = _augmentation(options)(x)
    for layer in preprocess:
        x = layer(x)
    x = backbone(x, training=False)  # BatchNorm in inference mode, in both phases
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(options.dropout, name="dropout")(x)
    outputs = _classifier(num_classes, options)(x)
    return keras.Model(inputs, outputs, name="auditor_finetune"), backbone


def _classifier(num_classes: int, options: FinetuneOptions):
    import keras

    return keras.layers.Dense(num_classes, activation="softmax", name="classifier",
                              kernel_regularizer=keras.regularizers.l2(options.l2))  # fmt: skip


#: keras.applications modules whose preprocess_input is "tf" mode (x / 127.5 - 1) or "torch"
#: mode (ImageNet mean/std); the others in KERAS_IN_MODEL preprocess inside the model.
KERAS_TF_MODE = ("mobilenet", "mobilenet_v2", "inception_v3", "inception_resnet_v2", "xception", "nasnet",
                 "resnet_v2")  # fmt: skip
KERAS_TORCH_MODE = ("densenet",)
KERAS_IN_MODEL = ("efficientnet", "efficientnet_v2", "convnext", "regnet", "mobilenet_v3")


def _base(options: FinetuneOptions):
    """(backbone model without top, preprocessing layers to put in front of it)."""
    import keras

    from auditor.embed.backbones import DEFAULT_BACKBONE, LITE0, BackboneError, keras_app, load_keras_app

    name = options.backbone or DEFAULT_BACKBONE
    size = options.image_size
    if name in (DEFAULT_BACKBONE, LITE0.id):
        from auditor.embed.backbones import efficientnet_lite as lite

        pretrained = _lite0_weights()
        backbone = lite.build_model(include_top=False, input_size=size)
        for layer in backbone.layers:  # weights are input-size independent
            weights = pretrained.get(layer.name) if layer.weights else None
            if weights:
                layer.set_weights(weights)
        return backbone, []
    try:
        fn = keras_app(name)
    except BackboneError as exc:
        raise FinetuneError(str(exc)) from None
    module = fn.__module__.rsplit(".", 1)[-1]
    if module in KERAS_TF_MODE:
        preprocess = [keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")]
    elif module in KERAS_TORCH_MODE:
        mean = np.array([0.485, 0.456, 0.406]) * 255
        var = (np.array([0.229, 0.224, 0.225]) * 255) ** 2
        preprocess = [keras.layers.Normalization(mean=mean, variance=var, name="preprocess")]
    elif module in KERAS_IN_MODEL:
        preprocess = []
    else:
        raise FinetuneError(f"{name}: its preprocessing (BGR, caffe-style) is not supported here; use efficientnet-"
                            "lite0 or e.g. ResNet50V2, MobileNetV2, EfficientNetB0, DenseNet121")  # fmt: skip
    try:
        backbone = load_keras_app(name, options.weights or "imagenet", include_top=False,
                                  input_shape=(options.image_size, options.image_size, 3))  # fmt: skip
    except BackboneError as exc:
        raise FinetuneError(str(exc)) from None
    return backbone, preprocess


@functools.lru_cache(maxsize=1)
def _lite0_weights() -> dict[str, list[np.ndarray]]:
    """Layer name -> the packaged ImageNet weights of EfficientNet-Lite0, read once per process
    (a search builds the model once per fine-tuning trial)."""
    from auditor.embed.backbones import efficientnet_lite as lite

    with quiet_tensorflow():
        pretrained = lite.load_model()
    return {layer.name: layer.get_weights() for layer in pretrained.layers if layer.weights}


def _augmentation(options: FinetuneOptions):
    import keras

    layers = {
        "flip": lambda: keras.layers.RandomFlip("horizontal", seed=options.seed),
        "rotation": lambda: keras.layers.RandomRotation(0.05, seed=options.seed),
        "zoom": lambda: keras.layers.RandomZoom(0.1, seed=options.seed),
        "translation": lambda: keras.layers.RandomTranslation(0.05, 0.05, seed=options.seed),
        "contrast": lambda: keras.layers.RandomContrast(0.1, seed=options.seed),
        "brightness": lambda: keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=options.seed),
    }
    unknown = [a for a in options.augment if a not in layers]
    if unknown:
        raise FinetuneError(f"unknown augmentation {unknown[0]!r}; expected some of {', '.join(AUGMENTATIONS)}")
    return keras.Sequential([layers[a]() for a in options.augment], name="augmentation")


#: Layer-name patterns that name a block in the supported backbones (Lite0 and EfficientNet
#: ``block6a_``, MobileNetV2 ``block_16_``, ResNetV2/DenseNet ``conv5_block3_``, Xception
#: ``block14_``, MobileNetV3 ``expanded_conv_10_``, ConvNeXt/RegNet ``..._stage_3_block_2_``).
BLOCK_PATTERNS = re.compile(
    r"^(?:.*?_)??(stage_?\d+_[a-z]?block_?\d+|conv\d+_block\d+|block_\d+|block\d+[a-z]?|expanded_conv(?:_\d+)?)(?:_|$)",
    re.IGNORECASE,
)


def block_of(name: str) -> str | None:
    """The block a layer belongs to, from its name (:data:`BLOCK_PATTERNS`:
    ``block7a_project_conv`` -> ``block7a``, ``conv5_block3_2_bn`` -> ``conv5_block3``,
    ``block_16_project`` -> ``block_16``, ``expanded_conv_10_add`` -> ``expanded_conv_10``).
    None for stem, head and automatically named layers (``conv2d_93``, ``add_38``)."""
    m = BLOCK_PATTERNS.match(name)
    return m.group(1) if m else None


def unfreeze_top(backbone, blocks: int) -> list[str]:
    """Make the top ``blocks`` blocks (see :func:`block_of`) and the layers after the last
    block (head convolution) trainable; every BatchNorm layer stays frozen. Returns the
    names of the layers made trainable."""
    import keras

    keys = [block_of(layer.name) for layer in backbone.layers]
    order = list(dict.fromkeys(k for k in keys if k is not None))
    wanted = set(order[max(0, len(order) - blocks) :]) if blocks > 0 else set()
    last = max((i for i, k in enumerate(keys) if k is not None), default=len(keys))
    backbone.trainable = True
    names = []
    for i, layer in enumerate(backbone.layers):
        top = keys[i] in wanted or (keys[i] is None and i > last)
        train = top and blocks > 0 and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = train
        if train and layer.weights:
            names.append(layer.name)
    if blocks > 0 and not order:
        raise FinetuneError(f"cannot tell the blocks of {backbone.name} from its layer names; use --unfreeze 0 "
                            "(head only) or another backbone")  # fmt: skip
    return names
