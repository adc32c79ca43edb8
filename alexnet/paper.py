"""Every constant taken from Krizhevsky, Sutskever & Hinton (NIPS 2012), with its section.

This is the one place a reader checks fidelity. Nothing here imports torch. Values that the
paper does not state, but that the author's code (cuda-convnet) fixes, are marked "[CC]"; values
derived by arithmetic are marked "[derived]". Sources: ../shared/reference/faithful-spec.md.
"""

from __future__ import annotations

# --- §2 The dataset -------------------------------------------------------------------------
STORED_SIZE = 256  # §2: shorter side rescaled to 256, then the central 256x256 patch
NUM_CLASSES = 1000  # §2: ILSVRC uses 1000 categories
ILSVRC2012_TRAIN_IMAGES = 1_281_167  # §2 ("roughly 1.2 million"); exact count of the release
ILSVRC2012_VAL_IMAGES = 50_000  # §2: 50,000 validation images

# --- §3.5 / Fig. 2 Architecture (two towers = "two GPUs") -----------------------------------
INPUT_SIZE = 224  # §3.5: 224x224x3 input ("150,528-dimensional")
TOWERS = 2  # §3.2: the net is spread across two GPUs
# Kernels per layer, both towers together (§3.5); each tower holds half.
CONV_WIDTHS = (96, 256, 384, 384, 256)
CONV_KERNELS = (11, 5, 3, 3, 3)  # §3.5: 11x11x3, 5x5x48, 3x3x256, 3x3x192, 3x3x192
CONV1_STRIDE = 4  # §3.5: "a stride of 4 pixels"
CONV_PADDING = (0, 2, 1, 1, 1)  # not in the paper; [CC], Caffe and torchvision agree (spec 1.1)
# §3.2: conv2, conv4, conv5 see only their own tower; conv3 and the fc layers see both.
TOWER_LOCAL_LAYERS = ("conv2", "conv4", "conv5")
FC_WIDTHS = (4096, 4096)  # §3.5: "the fully-connected layers have 4096 neurons each"
CONV1_OUTPUT = 55  # Fig. 2 / [derived]: 96x55x55, reached with the CC ceiling rule (spec 1.2)
CONV1_CEIL_PAD_BOTTOM_RIGHT = 3  # [derived]: 1 + ceil((224 - 11) / 4) = 55 windows, 3 px overhang

# --- §3.3 Local response normalisation ------------------------------------------------------
LRN_K = 2.0  # §3.3
LRN_SIZE = 5  # §3.3: n = 5 adjacent kernel maps
LRN_ALPHA = 1e-4  # §3.3: applied to the raw sum of squares (not divided by n)
LRN_BETA = 0.75  # §3.3
LRN_LAYERS = ("conv1", "conv2")  # §3.5: response-normalisation follows the 1st and 2nd conv

# --- §3.4 Overlapping pooling ---------------------------------------------------------------
POOL_SIZE = 3  # §3.4: z = 3
POOL_STRIDE = 2  # §3.4: s = 2 (z > s: overlapping)
POOL_SIZE_NON_OVERLAPPING = 2  # §3.4 ablation: z = s = 2

# --- §4.1 Data augmentation -----------------------------------------------------------------
CROP_OFFSETS = STORED_SIZE - INPUT_SIZE  # §4.1: random 224 patches of the 256 image: 0..32
FLIP_PROBABILITY = 0.5  # §4.1: horizontal reflections
PCA_ALPHA_STD = 0.1  # §4.1: alpha_i ~ N(0, 0.1), redrawn each time an image is used
TEST_VIEWS = 10  # §4.1: four corners + centre, and their reflections; softmax averaged

# --- §4.2 Dropout ---------------------------------------------------------------------------
DROPOUT_P = 0.5  # §4.2: outputs of the first two fc layers; at test x0.5, no training scale

# --- §5 Details of learning -----------------------------------------------------------------
BATCH_SIZE = 128  # §5
MOMENTUM = 0.9  # §5
WEIGHT_DECAY = 5e-4  # §5
LEARNING_RATE = 0.01  # §5: initialised at 0.01, equal for all layers
LR_DROP_FACTOR = 0.1  # §5: "divide the learning rate by 10 when the validation error rate
LR_MAX_DROPS = 3  # stopped improving"; "reduced three times prior to termination"
EPOCHS = 90  # §5: "roughly 90 cycles through the training set"
INIT_WEIGHT_STD = 0.01  # §5: zero-mean Gaussian, standard deviation 0.01, every layer
BIAS_ONE_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")  # §5: biases 1; the rest 0

# --- Ablations: how many points of error each feature saves (top-1, top-5; None = not stated) --
ABLATION_LRN = (1.4, 1.2)  # §3.3: "reduces our top-1 and top-5 error rates by 1.4% and 1.2%"
ABLATION_OVERLAPPING_POOL = (0.4, 0.3)  # §3.4: z=3, s=2 against z=s=2
ABLATION_TWO_TOWERS = (1.7, 1.2)  # §3.2: against a one-GPU net with half the kernels (conv1-4)
ABLATION_LIGHTING = (1.0, None)  # §4.1: "reduces the top-1 error rate by over 1%"

# --- Fb.resnet.torch lighting constants (ImageNet, [0,1] scale), spec 5.2 -----------------
FB_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
FB_PCA_EIGVEC = (  # columns are the principal components; rows R, G, B
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
# cuda-convnet2 make-data/input_meta, decoded (spec 5.2): std devs on the 0-255 scale.
CC2_PCA_STD = (121.7801, 37.0939, 19.7208)
CC2_PCA_EIGVEC = (
    (-0.5635, -0.7126, 0.4180),
    (-0.5762, -0.0235, -0.8170),
    (-0.5920, 0.7012, 0.3973),
)
CC2_LIGHTING_RESCALE = 1.0 / 1.1  # CC2 convdata.py: noisy training images are scaled by 1/1.1
# cuda-convnet2 layers-imagenet-2gpu-model.cfg cnorm2a/b (type rnorm), after LRN2; not in the
# paper: b = a / (min_div + scale / size^2 * S)^pow, S = sum of a^2 over a size x size window
# of the same map
# (layer.py divides scale by size^2; conv_util.cu kCNorm: window centred, clipped at the border).
CC2_SAME_MAP_SIZE = 5
CC2_SAME_MAP_SCALE = 1e-3
CC2_SAME_MAP_POW = 0.75
CC2_SAME_MAP_MIN_DIV = 1.0  # layer.py: minDiv defaults to 1; the cfg does not set it

# --- Counts the faithful configuration must reproduce ([derived], spec 1.3) -------------------
PARAMETERS = 60_965_224
MULTIPLY_ADDS = 724_406_816
