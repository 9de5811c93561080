"""The adversarial inputs of the numerical-safety tests: all-zero patches, a zero
filter, inputs exactly (anti-)parallel to a filter, magnitudes from 1e-20 to 1e20.

Used by tests/test_numerical_safety.py (TensorFlow, every dtype policy) and by
tests/backends/ (every Keras backend, float32).  NumPy only.
"""

import itertools

import ml_dtypes
import numpy as np

FILTERS = 4
#: (kernel, stride, padding, input shape).  'strided' has padding borders (all-zero
#: rows in the patches) and a patch that can be set to a filter; in 'pointwise' every
#: pixel is a patch, so every output can be made exactly (anti-)parallel.
CONFIGS = {
    "strided": (3, 2, "same", (2, 7, 7, 3)),
    "pointwise": (1, 1, "valid", (2, 4, 4, 3)),
}
STRUCTURES = ["random", "blank", "half_blank", "parallel", "antiparallel", "zero_filter"]
FLOAT16_MAX = float(np.finfo(np.float16).max)
FLOAT32_MAX = float(np.finfo(np.float32).max)

def make_case(config, structure, x_mag, w_mag, seed, policy):
    """(x, w, k_value) of one case; magnitudes are the largest |value| scale."""
    k, _, _, shape = CONFIGS[config]
    rng = np.random.RandomState(seed)
    w = rng.standard_normal((k, k, shape[-1], FILTERS)) * w_mag
    x = rng.standard_normal(shape) * x_mag
    if structure == "blank":
        x[:] = 0.0
    elif structure == "half_blank":
        x[:, : shape[1] // 2] = 0.0
        x[0] = 0.0
    elif structure == "zero_filter":
        w[..., rng.randint(FILTERS)] = 0.0
    elif structure in ("parallel", "antiparallel"):
        sign = 1.0 if structure == "parallel" else -1.0
        if config == "pointwise":  # every pixel = +-c * one filter: |cos| = 1 everywhere
            which = rng.randint(FILTERS, size=shape[:3])
            c = sign * np.exp(rng.uniform(-2, 2, size=shape[:3] + (1,))) * x_mag / max(w_mag, 1e-300)
            x = c * np.moveaxis(w[0, 0], -1, 0)[which]
        else:  # the patch of output (1, 1) is exactly +-c * filter f
            f = rng.randint(FILTERS)
            x[:] = 0.0
            x[rng.randint(shape[0]), 1:4, 1:4, :] = sign * w[..., f] * (x_mag / max(w_mag, 1e-300))
    with np.errstate(over="ignore"):  # inputs in the compute dtype, as a mixed model feeds them
        x = x.astype(np.float16 if policy == "mixed_float16" else np.float32)
    if policy == "mixed_bfloat16":
        x = x.astype(ml_dtypes.bfloat16).astype(np.float32)  # exactly bfloat16 values (nearest even)
    k_value = rng.uniform(-3, 3, FILTERS).astype(np.float32)
    k_value[rng.randint(FILTERS)] = 0.0  # |k| + 0.05 at its smallest
    return x, w.astype(np.float32), k_value


def representable(norm, w_norm, config, x, w, policy):
    """Whether the exact output and gradients fit the dtypes the layer computes in."""
    if not np.all(np.isfinite(x)):
        return False  # a float16 input above 65504: the caller's value is already Inf
    if (norm, w_norm) != ("none", "none"):
        return True  # bounded outputs (|g| <= 1, or |x| g <= |x|), bounded gradients
    k, _, _, shape = CONFIGS[config]
    n = k * k * shape[-1]
    mx, mw = float(np.abs(x).max()), float(np.abs(w).max())
    limit = FLOAT16_MAX if policy == "mixed_float16" else FLOAT32_MAX
    # a plain convolution in the compute dtype: output, kernel, input and filter gradients
    return max(n * mx * mw, mw, n * mw, x.size * mx) < limit / 4


GRID_MAGNITUDES = [0.0, 1e-20, 1e-6, 1.0, 1e6, 1e20]
#: Largest input magnitude (log10) per policy: float16 inputs stop at 65504 (a
#: mixed-precision model cannot hand the layer more); filters stay float32 (1e20).
X_MAX_EXP = {"float32": 20, "mixed_float16": 4, "mixed_bfloat16": 20}


def grid(policy):
    x_mags = [m for m in GRID_MAGNITUDES if m <= 10.0 ** X_MAX_EXP[policy]]
    if policy == "mixed_float16":
        x_mags.append(1e4)
    for config, structure in [("strided", "random"), ("strided", "half_blank"),
                              ("strided", "zero_filter")]:
        for xm, wm in itertools.product(x_mags, GRID_MAGNITUDES):
            yield config, structure, xm, wm
    for config, structure in itertools.product(["strided", "pointwise"], ["parallel", "antiparallel"]):
        for m in [1e-20, 1e-3, 1.0, 1e3, 1e20]:
            yield config, structure, min(m, 10.0 ** X_MAX_EXP[policy] / 10), m
            yield config, structure, 1.0, m  # the input 1, the filter tiny or huge


