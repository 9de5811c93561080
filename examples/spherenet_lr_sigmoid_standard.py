"""SphereNet-9 with learnable sigmoid SphereConv and the standard softmax loss.

Reproduces the original README row "SphereNet with learnable sigmoid SphereConv and standard softmax loss: 91.66%"
and the original log `results/spherenet_lr_sigmoid_standard_training.log`.
Expected best test accuracy: 91.66 % (iteration 39000; 91.32 % at 64000; 80 % first reached at iteration 3000).

Differs from the default `spherenet.py` in: norm.

    python examples/spherenet_lr_sigmoid_standard.py             # train, with train_spherenet.py's settings and options
    python examples/spherenet_lr_sigmoid_standard.py --help
    # or copy the four settings below over those in spherenet.py and run train_spherenet.py
"""

norm = 'lr_sigmoid'          # SphereConv of conv1_0..fc6: sigmoid with a learnable k per filter
w_norm = 'none'              # score layer: standard softmax loss
widths = (128, 192, 256)     # filters of the three stages (as spherenet.py)
fc6_bn = False               # BatchNorm after fc6: none (as spherenet.py)

if __name__ == '__main__':
    import _run

    _run.train(globals(), __file__)
