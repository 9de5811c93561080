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


# ---------------------------------------------------------------------------
# Gradients, float64: the chain rule of the formulas above written out by hand
# (no autodiff, no TensorFlow), checked against central differences in
# tests/test_numpy_reference.py.
# ---------------------------------------------------------------------------

def _sigmoid_c(k):
    a = np.exp(-np.pi / (2 * k))
    return (1 + a) / (1 - a), a


def _g_and_derivatives(c, norm, k=None):
    """(g(theta), dg/dc, dg/dk) at cos theta = c (float64, any shape).

    Outside [-1, 1] the reference clips (as the formulas above do), and the derivative
    of a clipped value is 0.  dg/dk is None except for the learnable sigmoid.
    """
    inside = np.abs(c) <= 1.0
    cc = np.clip(c, -1.0, 1.0)
    if norm == "cosine":
        return c, np.ones_like(c), None
    # phi = pi/2 - theta, as arcsin(c): pi/2 - arccos(c) cancels to 1e-16 in float64, which
    # is all there is of a cosine near 0 (a tiny filter's)
    phi = np.arcsin(cc)
    with np.errstate(divide="ignore"):
        dtheta_dc = np.where(inside & (np.abs(cc) < 1.0), -1.0 / np.sqrt(np.maximum(1.0 - cc * cc, 1e-300)), 0.0)
    if norm == "linear":  # 1 - 0.63662 theta
        return (1.0 - LINEAR_SLOPE * np.pi / 2) + LINEAR_SLOPE * phi, -LINEAR_SLOPE * dtheta_dc, None
    kk = 0.3 if norm == "sigmoid" else k
    C, a = _sigmoid_c(kk)
    t = np.tanh(phi / (2 * kk))  # = (1 - e) / (1 + e), e = exp(theta/k - pi/2k)
    sech2 = 1.0 / np.cosh(phi / (2 * kk)) ** 2  # 1 - t^2
    dg_dtheta = -C * sech2 / (2 * kk)
    dg_dk = None
    if norm == "lr_sigmoid":
        dC_dk = a * np.pi / (kk * kk * (1.0 - a) ** 2)
        dt_dk = -sech2 * phi / (2 * kk * kk)
        dg_dk = dC_dk * t + C * dt_dk
    return C * t, dg_dtheta * dtheta_dc, dg_dk


def col2im(dp, x_shape, k, stride=1, padding="same", dilation=1):
    """Adjoint of `patches`: scatter-add [B, Ho, Wo, k, k, C] patch gradients onto x."""
    b, h, w, c = x_shape
    k_eff = (k - 1) * dilation + 1
    if padding == "same":
        ho, top, bottom = _same_padding(h, k, stride, dilation)
        wo, left, right = _same_padding(w, k, stride, dilation)
    else:
        ho, wo = dp.shape[1:3]
        top = bottom = left = right = 0
    dx = np.zeros((b, h + top + bottom, w + left + right, c))
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * stride, j * stride
            dx[:, r0:r0 + k_eff:dilation, c0:c0 + k_eff:dilation, :] += dp[:, i, j]
    return dx[:, top:top + h, left:left + w, :]


def sphere_conv_grads(x, w, dy, stride=1, padding="same", norm="cosine", w_norm="none",
                      k_value=None):
    """(dx, dw, dk_value) of sum(dy * sphere_conv(x, w, ...)) in float64.

    dk_value is None unless norm = 'lr_sigmoid' (k = |k_value| + 0.05, whose derivative
    is taken as sign(k_value), 0 at 0, as TensorFlow's abs).
    """
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    dy = np.asarray(dy, np.float64)
    k = w.shape[0]
    p = patches(x, k, stride, padding)
    pm = p.reshape(p.shape[:3] + (-1,))                        # [B, Ho, Wo, n]
    wm = w.reshape(-1, w.shape[-1])                            # [n, F]
    conv = pm @ wm
    xn = np.sqrt(np.sum(pm * pm, axis=-1, keepdims=True) + EPS)  # [B, Ho, Wo, 1]
    wn = np.sqrt(np.sum(wm * wm, axis=0) + EPS)                # [F]
    d_xn = np.zeros_like(xn)
    d_wn = np.zeros_like(wn)
    # stage 1: the w_norm score s(conv, |x|, |W|)
    if w_norm == "none":
        s = conv
    elif w_norm == "cosine":
        s = conv / wn
    else:
        c1 = conv / (xn * wn)
        g1, dg1, _ = _g_and_derivatives(c1, w_norm)
        s = xn * g1
    # stage 2: the angular function of s / (|x| |W|)
    dk = None
    if norm == "none":
        ds = dy
    else:
        kk = None
        if norm == "lr_sigmoid":
            kv = np.asarray(k_value, np.float64)
            kk = np.abs(kv) + 0.05
        c2 = s / (xn * wn)
        _, dg2, dgk = _g_and_derivatives(c2, norm, kk)
        dc2 = dy * dg2
        ds = dc2 / (xn * wn)
        d_xn += -np.sum(dc2 * c2, axis=-1, keepdims=True) / xn
        d_wn += -np.sum(dc2 * c2, axis=(0, 1, 2)) / wn
        if norm == "lr_sigmoid":
            dk = np.sum(dy * dgk, axis=(0, 1, 2)) * np.sign(kv)
    if w_norm == "none":
        dconv = ds
    elif w_norm == "cosine":
        dconv = ds / wn
        d_wn += -np.sum(ds * conv, axis=(0, 1, 2)) / (wn * wn)
    else:
        dc1 = ds * xn * dg1
        dconv = dc1 / (xn * wn)
        d_xn += np.sum(ds * g1, axis=-1, keepdims=True) - np.sum(dc1 * c1, axis=-1, keepdims=True) / xn
        d_wn += -np.sum(dc1 * c1, axis=(0, 1, 2)) / wn
    dpm = dconv @ wm.T + d_xn * pm / xn
    dwm = np.einsum("bhwn,bhwf->nf", pm, dconv) + d_wn * wm / wn
    dx = col2im(dpm.reshape(p.shape), x.shape, k, stride, padding)
    return dx, dwm.reshape(w.shape), dk
