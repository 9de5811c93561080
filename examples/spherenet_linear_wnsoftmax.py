"""SphereNet-9 with linear SphereConv and the weight-normalised softmax loss.

Reproduces no row of the original README: the original reports no run of this combination (its example
`spherenet_linear_sphereconv_wsoftmax.py` sets it up on the 196-wide network).
Expected best test accuracy: not reported by the original; its linear and weight-normalised results (91.65 %, 91.44 %)
suggest about 91.5 %.

Differs from the default `spherenet.py` in: norm, w_norm.

    python examples/spherenet_linear_wnsoftmax.py             # train, with train_spherenet.py's settings and options
    python examples/spherenet_linear_wnsoftmax.py --help
    # or copy the four settings below over those in spherenet.py and run train_spherenet.py
"""

norm = 'linear'              # SphereConv of conv1_0..fc6: linear, g(theta) = 1 - 0.63662 theta
w_norm = 'cosine'            # score layer: weight-normalised softmax (|x| cos theta)
widths = (128, 192, 256)     # filters of the three stages (as spherenet.py)
fc6_bn = False               # BatchNorm after fc6: none (as spherenet.py)

if __name__ == '__main__':
    import _run

    _run.train(globals(), __file__)
