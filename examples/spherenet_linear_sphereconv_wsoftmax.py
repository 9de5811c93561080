"""The original example `examples/spherenet_linear_sphereconv_wsoftmax.py`: linear SphereConv, weight-normalised softmax.

The original's example setups change `spherenet.py` in more than `norm`: stage 2 has 196
filters and fc6 is followed by BatchNorm.  The original README reports no run of this
network; its SphereNet-9 results were trained with the default one (judging by the logs:
`reg` at iteration 100 is 0.478-0.489 in every SphereNet log, which fits the default
network's initial 0.437 rather than this one's 0.504).
Expected best test accuracy: not reported by the original; expect the default network's
figures for the same norm (91.65 % linear, 91.81 % sigmoid).

Differs from the default `spherenet.py` in: norm, w_norm, widths, fc6_bn.

    python examples/spherenet_linear_sphereconv_wsoftmax.py             # train, with train_spherenet.py's settings and options
    python examples/spherenet_linear_sphereconv_wsoftmax.py --help
    # or copy the four settings below over those in spherenet.py and run train_spherenet.py
"""

norm = 'linear'              # SphereConv of conv1_0..fc6: linear, g(theta) = 1 - 0.63662 theta
w_norm = 'cosine'            # score layer: weight-normalised softmax (|x| cos theta)
widths = (128, 196, 256)     # filters of the three stages (the original examples' 196 in stage 2)
fc6_bn = True                # BatchNorm after fc6 (the original examples have it)

if __name__ == '__main__':
    import _run

    _run.train(globals(), __file__)
