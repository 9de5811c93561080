"""SphereNet-9 with cosine SphereConv and the weight-normalised softmax loss.

Reproduces the original README row "SphereNet with cosine SphereConv and weight-normalized softmax loss: 91.44%"
and the original log `results/spherenet_cos_wnsoftmax_training.log`.
Expected best test accuracy: 91.44 % (iteration 53500; 91.22 % at 64000; 80 % first reached at iteration 3500).

Differs from the default `spherenet.py` in: w_norm.

    python examples/spherenet_cos_wnsoftmax.py             # train, with train_spherenet.py's settings and options
    python examples/spherenet_cos_wnsoftmax.py --help
    # or copy the four settings below over those in spherenet.py and run train_spherenet.py
"""

norm = 'cosine'              # SphereConv of conv1_0..fc6: cosine, g(theta) = cos(theta)
w_norm = 'cosine'            # score layer: weight-normalised softmax (|x| cos theta)
widths = (128, 192, 256)     # filters of the three stages (as spherenet.py)
fc6_bn = False               # BatchNorm after fc6: none (as spherenet.py)

if __name__ == '__main__':
    import _run

    _run.train(globals(), __file__)
