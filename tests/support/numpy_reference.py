"""An independent float64 NumPy implementation of SphereConv and its losses.

Written from the formulas (paper section 2, REFERENCE facts), not from the port's
code: explicit patch extraction, no TensorFlow.
"""

import numpy as np

LINEAR_SLOPE = 0.63662
EPS = 1e-4


def _same_padding(size, k, stride, dilation):
    k_eff = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return out, total // 2, total - total // 2


def patches(x, k, stride=1, padding="same", dilation=1):
    """[B, Ho, Wo, k, k, C] windows of x as the convolution sees them (zero padding)."""
    b, h, w, c = x.shape
    k_eff = (k - 1) * dilation + 1
    if padding == "same":
        ho, top, bottom = _same_padding(h, k, stride, dilation)
        wo, left, right = _same_padding(w, k, stride, dilation)
        x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    else:
        ho = (h - k_eff) // stride + 1
        wo = (w - k_eff) // stride + 1
    out = np.zeros((b, ho, wo, k, k, c), x.dtype)
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * stride, j * stride
            out[:, i, j] = x[:, r0:r0 + k_eff:dilation, c0:c0 + k_eff:dilation, :]
    return out


def g_of_theta(theta, norm, k=None):
    if norm == "cosine":
        return np.cos(theta)
    if norm == "linear":
        return 1.0 - LINEAR_SLOPE * theta
    if norm == "sigmoid":
        k = 0.3
    c = (1 + np.exp(-np.pi / (2 * k))) / (1 - np.exp(-np.pi / (2 * k)))
    e = np.exp(theta / k - np.pi / (2 * k))
    return c * (1 - e) / (1 + e)


def sphere_conv(x, w, stride=1, padding="same", norm="cosine", w_norm="none", k_value=None,
                dilation=1):
    """SphereConv output in float64. `k_value` is the raw learnable k (|k| + 0.05 used)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    p = patches(x, w.shape[0], stride, padding, dilation)
    conv = np.einsum("bhwijc,ijcf->bhwf", p, w)
    xnorm = np.sqrt(np.sum(p**2, axis=(3, 4, 5)) + EPS)[..., None]
    wnorm = np.sqrt(np.sum(w**2, axis=(0, 1, 2)) + EPS)
    out = conv
    if w_norm == "cosine":
        out = conv / wnorm
    elif w_norm in ("linear", "sigmoid"):
        out = xnorm * g_of_theta(np.arccos(np.clip(conv / (xnorm * wnorm), -1, 1)), w_norm)
    if norm == "none":
        return out
    k = None if k_value is None else np.abs(np.asarray(k_value, np.float64)) + 0.05
    cos = out / (xnorm * wnorm)
    if norm == "cosine":
        return cos
    return g_of_theta(np.arccos(np.clip(cos, -1, 1)), norm, k)


def loss2(logits, labels, n_class):
    logits = np.asarray(logits, np.float64).reshape(-1, n_class)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = z / z.sum(axis=1, keepdims=True) + 1e-4
    t = 0.99 * np.eye(n_class)[np.asarray(labels).reshape(-1)] + 0.01 / n_class
    return float(np.mean(-np.sum(t * np.log(p), axis=1)))


def orth_loss(w, scale=2e-4):
    wm = np.asarray(w, np.float64).reshape(-1, w.shape[-1])
    d = wm.T @ wm - np.eye(wm.shape[1])
    return scale * np.sum(d * d) / 2
