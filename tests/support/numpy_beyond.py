"""Independent float64 NumPy references for the parts beyond the original repository:
GA-softmax with margin, decoupled operators (DCNets), SphereNorm.

Written from the formulas (papers, DCNets' TF1 code as facts), not from the port's
code: explicit patches, explicit piecewise intervals, no TensorFlow.
"""

import numpy as np

from .numpy_reference import EPS, g_of_theta, loss2, patches


# --- GA-softmax ------------------------------------------------------------------
def psi(theta, g, m):
    """psi(theta) = g(m theta) made decreasing on [0, pi]: linear g(m theta) as it is;
    on the interval [k pi/m, (k+1) pi/m], cosine SphereFace's (-1)^k cos(m theta) - 2k
    and sigmoid g(m theta - k pi) - 2k."""
    theta = np.asarray(theta, np.float64)
    if g == "linear":
        return g_of_theta(m * theta, g)
    out = np.full(theta.shape, np.nan)
    n_pieces = int(np.ceil(m))
    for k in range(n_pieces):
        lo, hi = k * np.pi / m, (k + 1) * np.pi / m
        inside = (theta >= lo) & (theta <= hi) if k == n_pieces - 1 else (theta >= lo) & (theta < hi)
        if g == "cosine":
            out[inside] = (-1) ** k * np.cos(m * theta[inside]) - 2 * k
        else:
            out[inside] = g_of_theta(m * theta[inside] - k * np.pi, g) - 2 * k
    return out


def ga_logits(x, w, g):
    """Margin-free |x| g(theta_j) of features x [B, C], class weights w [C, n]."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    xnorm = np.sqrt(np.sum(x * x, axis=1, keepdims=True) + EPS)
    wnorm = np.sqrt(np.sum(w * w, axis=0) + EPS)
    cos = (x @ w) / xnorm / wnorm
    if g == "cosine":
        return (x @ w) / wnorm, xnorm, cos
    return xnorm * g_of_theta(np.arccos(np.clip(cos, -1, 1)), g), xnorm, cos


def ga_margin_logits(x, w, labels, g, m):
    logits, xnorm, cos = ga_logits(x, w, g)
    out = logits.copy()
    for i, y in enumerate(labels):
        out[i, y] = xnorm[i, 0] * psi(np.arccos(np.clip(cos[i, y], -1, 1)), g, m)
    return out


def ga_softmax_loss2(x, w, labels, g, m):
    """The original's loss2 on the margin logits."""
    return loss2(ga_margin_logits(x, w, labels, g, m), labels, w.shape[1])


# --- decoupled operators ---------------------------------------------------------
def magnitude(xnorm, name, rho=None):
    if name == "none":
        return np.ones_like(xnorm)
    if name == "ball":
        return np.minimum(xnorm / rho, 1.0)
    if name == "tanh":
        return np.tanh(xnorm / rho)
    if name == "linear":
        return xnorm
    if name == "seg":
        return np.where(xnorm <= rho, xnorm, 0.5 * xnorm + 0.5 * rho)
    if name == "log":
        return np.log(1.0 + xnorm)
    raise ValueError(name)


def _norms_and_cosine(x, w, stride, padding):
    """(|x| [B, Ho, Wo, 1], |w| [C_out], cos theta [B, Ho, Wo, C_out]) with explicit patches."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    p = patches(x, w.shape[0], stride, padding)
    xnorm = np.sqrt(np.sum(p ** 2, axis=(3, 4, 5)) + EPS)[..., None]
    wnorm = np.sqrt(np.sum(w ** 2, axis=(0, 1, 2)) + EPS)
    return xnorm, wnorm, np.einsum("bhwijc,ijcf->bhwf", p, w) / (xnorm * wnorm)


def decoupled_conv(x, w, name, norm="cosine", rho=None, stride=1, padding="same"):
    """h(|x|) g(theta) with explicit patches; `rho` a number, [C_out], or a callable
    of the patch norms [B, Ho, Wo, 1] returning rho."""
    xnorm, wnorm, cos = _norms_and_cosine(x, w, stride, padding)
    angular = cos if norm == "cosine" else g_of_theta(np.arccos(np.clip(cos, -1, 1)), norm)
    if callable(rho):
        rho = rho(xnorm)
    return magnitude(xnorm, name, rho) * angular, xnorm


# --- SphereNorm ------------------------------------------------------------------
def sphere_norm(x, w, alpha, beta, stride=1, padding="same"):
    """|x|^alpha |w|^beta cos(theta), written as a product (not as the port's quotient)."""
    xnorm, wnorm, cos = _norms_and_cosine(x, w, stride, padding)
    return xnorm ** np.asarray(alpha) * wnorm ** np.asarray(beta) * cos
