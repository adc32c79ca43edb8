"""The paper's constants, pinned to the numbers printed in it, and the config defaults.

Every number below is typed from Krizhevsky, Sutskever & Hinton (NIPS 2012) or from
faithful-spec.md, not read from ``alexnet/paper.py``: a changed constant fails here.
"""

from __future__ import annotations

import pytest

from alexnet import paper
from alexnet.config import Config, input_size

PINNED = {
    # §2 the data set
    "STORED_SIZE": 256,
    "NUM_CLASSES": 1000,
    "ILSVRC2012_TRAIN_IMAGES": 1_281_167,
    "ILSVRC2012_VAL_IMAGES": 50_000,
    # §3.2, §3.5 the architecture
    "INPUT_SIZE": 224,
    "TOWERS": 2,
    "CONV_WIDTHS": (96, 256, 384, 384, 256),
    "CONV_KERNELS": (11, 5, 3, 3, 3),
    "CONV1_STRIDE": 4,
    "CONV_PADDING": (0, 2, 1, 1, 1),
    "TOWER_LOCAL_LAYERS": ("conv2", "conv4", "conv5"),
    "FC_WIDTHS": (4096, 4096),
    "CONV1_OUTPUT": 55,
    "CONV1_CEIL_PAD_BOTTOM_RIGHT": 3,
    # §3.3 local response normalisation
    "LRN_K": 2.0,
    "LRN_SIZE": 5,
    "LRN_ALPHA": 1e-4,
    "LRN_BETA": 0.75,
    "LRN_LAYERS": ("conv1", "conv2"),
    # §3.4 overlapping pooling
    "POOL_SIZE": 3,
    "POOL_STRIDE": 2,
    "POOL_SIZE_NON_OVERLAPPING": 2,
    # §4.1 data augmentation, §4.2 dropout
    "CROP_OFFSETS": 32,
    "FLIP_PROBABILITY": 0.5,
    "PCA_ALPHA_STD": 0.1,
    "TEST_VIEWS": 10,
    "DROPOUT_P": 0.5,
    # §5 details of learning
    "BATCH_SIZE": 128,
    "MOMENTUM": 0.9,
    "WEIGHT_DECAY": 0.0005,
    "LEARNING_RATE": 0.01,
    "LR_DROP_FACTOR": 0.1,
    "LR_MAX_DROPS": 3,
    "EPOCHS": 90,
    "INIT_WEIGHT_STD": 0.01,
    "BIAS_ONE_LAYERS": ("conv2", "conv4", "conv5", "fc6", "fc7"),
    # faithful-spec 1.3: the counts of the faithful network
    "PARAMETERS": 60_965_224,
    "MULTIPLY_ADDS": 724_406_816,
    # faithful-spec 5.2: fb.resnet.torch and cuda-convnet2 lighting constants
    "FB_PCA_EIGVAL": (0.2175, 0.0188, 0.0045),
    "CC2_PCA_STD": (121.7801, 37.0939, 19.7208),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_constant_is_the_papers(name: str) -> None:
    assert getattr(paper, name) == PINNED[name]


def test_config_defaults_are_the_papers_recipe() -> None:
    cfg = Config()
    lrn, drop, optim, sched = cfg.model.lrn, cfg.model.dropout, cfg.optim, cfg.schedule
    assert (cfg.model.arch, cfg.model.num_classes, cfg.model.activation) == (
        "two_tower",
        1000,
        "relu",
    )
    assert (cfg.model.conv1_geometry, cfg.model.pooling) == ("cc_ceil", "overlapping")
    assert (lrn.enabled, lrn.k, lrn.size, lrn.alpha, lrn.beta) == (True, 2.0, 5, 1e-4, 0.75)
    assert (lrn.alpha_semantics, lrn.per_tower, lrn.conv1_position) == (
        "raw_sum",
        True,
        "after_relu",
    )
    assert (drop.p, drop.style, drop.placement) == (0.5, "paper", "outputs")
    assert cfg.model.init.preset == "paper"
    assert (optim.lr, optim.momentum, optim.weight_decay) == (0.01, 0.9, 0.0005)
    assert (optim.momentum_semantics, optim.bias_lr_mult) == ("paper", 1.0)
    assert (sched.type, sched.factor, sched.max_drops) == ("plateau", 0.1, 3)
    assert (cfg.train.epochs, cfg.train.batch_size) == (90, 128)
    assert (cfg.augment.random_crop, cfg.augment.flip) == (True, True)
    assert (cfg.augment.lighting, cfg.augment.lighting_alpha_std) == ("eigenvalue", 0.1)
    assert (cfg.data.normalize, cfg.eval.views) == ("mean_image", 10)
    assert (cfg.runtime.dtype, cfg.parallel.mode) == ("float32", "single")
    assert input_size(cfg.model) == 224
