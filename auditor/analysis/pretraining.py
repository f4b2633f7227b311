"""How far a dataset is from the backbone's pretraining domain, without ImageNet images.

A frozen backbone remembers its training distribution in two places:

- every BatchNorm layer stores the running mean and variance of its inputs on ImageNet.
  The embedder records, per image, the per-channel mean and standard deviation of the
  inputs of 18 BatchNorm layers (stem, every block's output, head); pooled over the
  dataset they give the dataset's own per-channel Gaussian at each layer. The **feature
  gap** is the mean over layers of the mean over channels of ``log(1 + symmetric KL)``
  between the dataset's Gaussian and the stored one;
- the ImageNet classifier head: images like ImageNet's get confident predictions. The
  **head confidence** is the mean max-softmax probability (and the mean entropy, nats).

Units are backbone-specific. For the default EfficientNet-Lite0 the deeper layers' stored
statistics differ from natural photos too (the feature gap of natural photos is about 1.85
to 1.95, not 0), so the gap is read against bands calibrated on real data; see the README.
"""

from __future__ import annotations

import numpy as np

#: Layers per group, by position in the recorded list (stem + 16 blocks + head).
GROUPS = (("early", slice(0, 7)), ("middle", slice(7, 13)), ("late", slice(13, None)))
#: Added to both variances (the BatchNorm epsilon): keeps dead channels finite.
EPS = 1e-3


def dataset_moments(bn_stats, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Pool per-image channel statistics into the dataset's per-channel mean and variance.

    ``bn_stats``: (n, 2*C), per image all C channel means then all C standard deviations
    (over spatial positions): an array, or rows read in blocks (a
    :class:`auditor.embed.blocks.DiskMatrix` or :class:`~auditor.embed.blocks.RowSubset`).
    Returns (mean (C,), variance (C,)) over images and positions. Summed a block at a time,
    row after row as numpy sums a column: the same numbers as the whole array gives."""
    from auditor.embed.blocks import iter_blocks

    total_m = np.zeros((1, channels))
    total_q = np.zeros((1, channels))
    n = 0
    for block in iter_blocks(bn_stats):
        stats = np.asarray(block, dtype=np.float64)
        means, stds = stats[:, :channels], stats[:, channels:]
        # the running total first, then each row in order: numpy's column sum, continued
        total_m = np.add.reduce(np.concatenate([total_m, means]), axis=0, keepdims=True)
        total_q = np.add.reduce(np.concatenate([total_q, stds**2 + means**2]), axis=0, keepdims=True)
        n += len(stats)
    mu = total_m[0] / n
    var = np.maximum(total_q[0] / n - mu**2, 0.0)
    return mu, var


def symmetric_kl(mu1: np.ndarray, var1: np.ndarray, mu2: np.ndarray, var2: np.ndarray) -> np.ndarray:
    """KL(p||q) + KL(q||p) between 1-D Gaussians, elementwise (nats)."""
    d2 = (mu1 - mu2) ** 2
    return 0.5 * ((var1 + d2) / var2 + (var2 + d2) / var1) - 1.0


def pretraining_gap(
    bn_stats,
    stat_layers: list[tuple[str, int]],
    reference: dict[str, tuple[np.ndarray, np.ndarray]],
    probs,
) -> dict | None:
    """The pretraining-gap measures of a set of images (rows = images). ``bn_stats`` and
    ``probs``: arrays, or rows read in blocks (see :func:`dataset_moments`), or None.

    Returns ``{"images", "feature_gap", "layers": {name: gap}, "groups": {early, middle,
    late}, "head_confidence", "head_entropy"}`` (a measure is None when the backbone does
    not record it), or None when neither is available."""
    out: dict = {"images": 0, "feature_gap": None, "layers": {}, "groups": {}, "head_confidence": None,
                 "head_entropy": None}  # fmt: skip
    if bn_stats is not None and len(bn_stats) and stat_layers and reference:
        total = sum(c for _, c in stat_layers)
        mu, var = dataset_moments(bn_stats, total)
        per_layer = []
        offset = 0
        for name, c in stat_layers:
            ref_mu, ref_var = (np.asarray(a, dtype=np.float64) for a in reference[name])
            skl = symmetric_kl(mu[offset : offset + c], var[offset : offset + c] + EPS, ref_mu, ref_var + EPS)
            per_layer.append(float(np.mean(np.log1p(skl))))
            offset += c
        out["images"] = len(bn_stats)
        out["feature_gap"] = float(np.mean(per_layer))
        out["layers"] = dict(zip([n for n, _ in stat_layers], per_layer, strict=True))
        out["groups"] = {g: float(np.mean(per_layer[s])) for g, s in GROUPS if per_layer[s]}
    if probs is not None and len(probs):
        from auditor.embed.blocks import iter_blocks

        top, entropy = [], []
        for block in iter_blocks(probs):  # per image, then the mean over all: as for the whole array
            p = np.asarray(block, dtype=np.float64)
            top.append(p.max(axis=1))
            entropy.append(-(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1))
        out["images"] = max(out["images"], len(probs))
        out["head_confidence"] = float(np.concatenate(top).mean())
        out["head_entropy"] = float(np.concatenate(entropy).mean())
    if out["feature_gap"] is None and out["head_confidence"] is None:
        return None
    return out
