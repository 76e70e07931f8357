"""The public sources the practice stands on, as messages cite them.

Every message, docstring and advice cites one of these short forms; the full
references are below and in the README ("Where the practice comes from").

References:
    Johnson, "Deep Learning for Computer Vision", University of Michigan
    EECS 498/598, Lecture 11 "Training Neural Networks II" (steps 1-6:
    initial loss, overfit a small sample, a rate that makes the loss drop,
    coarse and fine grids, learning curves).
    Stanford CS231n, "Neural Networks Part 3: Learning and Evaluation"
    (sanity checks, the ratio of weight updates to weight magnitudes).
    Smith, "Cyclical Learning Rates for Training Neural Networks", 2017,
    arXiv:1506.01186 (the learning-rate range test).
    Smith, "A disciplined approach to neural network hyper-parameters:
    Part 1", 2018, arXiv:1803.09820 (bounds, momentum, weight decay grid).
    Smith & Topin, "Super-Convergence", 2019, arXiv:1708.07120 (one cycle).
    Godbole, Dahl, Gilmer, Shallue & Nado, "Deep Learning Tuning Playbook",
    Google Research, 2023, github.com/google-research/tuning_playbook.
    Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep
    Convolutional Neural Networks", 2012 (divide the rate by 10 when the
    validation error stops improving).
    He, Zhang, Ren & Sun, "Deep Residual Learning", 2016, arXiv:1512.03385.
    Goyal et al., "Accurate, Large Minibatch SGD", 2017, arXiv:1706.02677.
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019,
    arXiv:1711.05101.
    van Laarhoven, "L2 Regularization versus Batch and Weight
    Normalization", 2017, arXiv:1706.05350.
    Wen, Zhang, Li & Qiao, "A Discriminative Feature Learning Approach for
    Deep Face Recognition", ECCV 2016 (the center loss).
    Loshchilov & Hutter, "SGDR", 2017, arXiv:1608.03983.
    Howard & Ruder, "Universal Language Model Fine-tuning", 2018,
    arXiv:1801.06146.
    Wilson et al., "The Marginal Value of Adaptive Gradient Methods", 2017,
    arXiv:1705.08292.
    Keskar et al., "On Large-Batch Training for Deep Learning", 2017,
    arXiv:1609.04836.
    Masters & Luschi, "Revisiting Small Batch Training", 2018,
    arXiv:1804.07612.
"""


def johnson(step=None):
    """Johnson's lecture on choosing hyperparameters, optionally one of its steps 1-6."""
    return "Johnson, EECS 498 Lecture 11" + (f", step {step}" if step is not None else "")


def playbook(topic=None):
    """The Deep Learning Tuning Playbook, optionally one of its topics."""
    return "Tuning Playbook" + (f": {topic}" if topic else "")


CS231N = "CS231n, learning and evaluation"
RANGE_TEST = "Smith 2017"
DISCIPLINED = "Smith 2018"
ONE_CYCLE = "Smith & Topin 2019"
STEP_DOWN = "Krizhevsky et al. 2012"
RESNET = "He et al. 2016"
LARGE_BATCH_LR = "Goyal et al. 2017"
DECOUPLED_DECAY = "Loshchilov & Hutter 2019"
L2_VS_NORMALIZATION = "van Laarhoven 2017"
CENTER_LOSS = "Wen et al. 2016"
SGDR = "Loshchilov & Hutter 2017"
ULMFIT = "Howard & Ruder 2018"
ADAPTIVE_VS_SGD = "Wilson et al. 2017"
LARGE_BATCH_GENERALIZATION = "Keskar et al. 2017"
SMALL_BATCH = "Masters & Luschi 2018"
