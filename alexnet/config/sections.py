"""The configuration's sections: frozen dataclasses whose defaults are the paper's.

Each section checks its own values in ``problems()``; ``alexnet.config.loading`` turns YAML and
``--set`` overrides into these objects and reports every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from alexnet import paper
from alexnet.config.checks import non_negative, positive, suggest
from alexnet.config.model import ALL_LAYERS, ModelConfig

frozen = dataclass(frozen=True, kw_only=True)


@frozen
class DataConfig:
    """The prepared data set (``python -m alexnet.prepare``) and how batches are made."""

    root: Path = Path("data/ilsvrc2012")  # a folder written by alexnet.prepare
    train_split: str = "train"
    val_split: str = "val"
    loader: Literal["cpu", "gpu"] = "cpu"  # gpu: batched nvJPEG decode + augmentation on GPU
    workers: int | None = None  # CPU loader worker processes; None = the machine's cores, at most 8
    # mean_image: §2 per-pixel mean of the 256x256 training images, cropped with the image.
    # mean_image_center: CC2 subtracts the central crop of the mean. channel_mean_std: torchvision.
    normalize: Literal["mean_image", "mean_image_center", "channel_mean_std"] = "mean_image"
    channel_order: Literal["rgb", "bgr"] = "rgb"  # §2 raw RGB; bgr: Caffe (OpenCV) order
    # How the prepared images were made (checked against its meta.json): shorter_side = §2
    # (shorter side 256, central 256x256); warp = Caffe (whole image to 256x256, aspect ignored,
    # `python -m alexnet.prepare --resize warp`).
    resize: Literal["shorter_side", "warp"] = "shorter_side"
    # A record whose bytes fail their checksum or whose JPEG decodes with a warning or error.
    # stop: one line naming it, a checkpoint of the steps done, exit 2. skip: training uses
    # another record of the split instead, drawn from (seed, epoch, step, position) so resumes
    # stay bit-identical; evaluation leaves it out; both count what they left out.
    on_corrupt: Literal["stop", "skip"] = "stop"
    # Check each record's CRC-32 as it is read (about 2 % of decoding it; docs/BENCHMARKS.md)
    verify_checksums: bool = True

    def problems(self) -> list[str]:
        if self.workers is not None and self.workers < 0:
            return [f"workers: must be >= 0 or null, got {self.workers}"]
        return []


@frozen
class AugmentConfig:
    """Training augmentation (§4.1)."""

    random_crop: bool = True  # random 224 patches at offsets 0..32; False = centre crop
    # torchvision: RandomResizedCrop (area 8-100 %, aspect 3/4-4/3) of the stored 256x256
    # image, resized to the input size; replaces random_crop when true
    random_resized_crop: bool = False
    flip: bool = True  # horizontal reflection with p = 1/2
    # eigenvalue: the paper's alpha * lambda with lambda on a [0,1] pixel scale (fb.resnet);
    # sqrt_eigenvalue: CC2's alpha * sqrt(lambda) on 0-255 with the 1/1.1 rescale; off: none.
    lighting: Literal["eigenvalue", "sqrt_eigenvalue", "off"] = "eigenvalue"
    lighting_alpha_std: float = paper.PCA_ALPHA_STD
    lighting_constants: Literal["dataset", "fb", "cuda_convnet2"] = "dataset"

    def problems(self) -> list[str]:
        return non_negative(self, "lighting_alpha_std")


@frozen
class OptimConfig:
    """SGD (§5)."""

    lr: float = paper.LEARNING_RATE
    momentum: float = paper.MOMENTUM
    weight_decay: float = paper.WEIGHT_DECAY
    # paper: velocity in parameter units (v = m v - wd lr w - lr g), so an lr cut does not
    # rescale the accumulated velocity; pytorch: torch.optim.SGD (lr multiplies the buffer).
    momentum_semantics: Literal["paper", "pytorch"] = "paper"
    bias_lr_mult: float = 1.0  # §5 "equal learning rate for all layers"; CC2 and Caffe use 2
    bias_weight_decay: float | None = None  # None = same as weight_decay; CC2 and Caffe use 0

    def problems(self) -> list[str]:
        out = positive(self, "lr", "bias_lr_mult") + non_negative(self, "weight_decay")
        if not 0.0 <= self.momentum < 1.0:
            out.append(f"momentum: must be in [0, 1), got {self.momentum}")
        if self.bias_weight_decay is not None and self.bias_weight_decay < 0:
            out.append(f"bias_weight_decay: must be >= 0, got {self.bias_weight_decay}")
        return out


@frozen
class ScheduleConfig:
    """Learning-rate schedule (§5): divide by 10 when validation error stops improving."""

    type: Literal["plateau", "milestones"] = "plateau"
    factor: float = paper.LR_DROP_FACTOR
    patience: int = 3  # epochs without improvement before a cut (the paper does not say)
    threshold: float = 1e-3  # an improvement smaller than this (absolute error) does not count
    max_drops: int = paper.LR_MAX_DROPS  # §5: three cuts, then training stops
    milestones: tuple[int, ...] = ()  # epochs, for type=milestones (torchvision: 30, 60)
    # type=milestones only: the biases' own cuts (cuda-convnet2 cuts biases apart from weights);
    # null = the biases follow the weights
    bias_milestones: tuple[int, ...] | None = None
    bias_factor: float | None = None  # null = factor

    def problems(self) -> list[str]:
        out = non_negative(self, "patience", "threshold", "max_drops")
        for name in ("factor", "bias_factor"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                out.append(f"{name}: must be in (0, 1), got {value}")
        for name in ("milestones", "bias_milestones"):
            value = list(getattr(self, name) or ())
            if self.type == "milestones" and value != sorted(set(value)):
                out.append(f"{name}: must be strictly increasing, got {value}")
        own_bias = self.bias_milestones is not None or self.bias_factor is not None
        if self.type != "milestones" and own_bias:
            out.append("bias_milestones, bias_factor: only with type=milestones")
        return out


@frozen
class TrainConfig:
    """The training run."""

    epochs: int = paper.EPOCHS
    batch_size: int = paper.BATCH_SIZE  # global: split across DDP processes
    seed: int = 0
    steps_per_epoch: int | None = None  # None = the whole training set each epoch
    checkpoint_every: int = 1000  # steps between mid-epoch `last` checkpoints (0 = epoch ends only)
    log_every: int = 20  # steps between TensorBoard / JSONL scalar records
    val_views: Literal[1, 10] = 1  # views used for the per-epoch validation error
    stall_steps: int = 2000  # warn if the loss is still within 0.05 of ln(classes) after this

    def problems(self) -> list[str]:
        out = positive(self, "epochs", "batch_size", "log_every")
        out += non_negative(self, "checkpoint_every", "stall_steps")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            out.append(f"steps_per_epoch: must be >= 1 or null, got {self.steps_per_epoch}")
        return out


@frozen
class EvalConfig:
    """Evaluation (§4.1: ten views, softmax averaged)."""

    views: Literal[1, 10] = paper.TEST_VIEWS
    batch_size: int = 128  # images per batch (x views forward passes)

    def problems(self) -> list[str]:
        return positive(self, "batch_size")


@frozen
class ParallelConfig:
    """How the work is spread over devices and processes."""

    # single: one device, towers as grouped convs; two_device: the paper's towers on two
    # devices in one process (§3.2); ddp: data parallel over torchrun processes.
    mode: Literal["single", "two_device", "ddp"] = "single"
    devices: tuple[str, ...] = ()  # () = auto: cuda:0 (and cuda:1) if present, else cpu
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # ddp only; auto = nccl on GPUs
    # ddp only: each process runs the two-device form on GPUs 2*local_rank and 2*local_rank+1
    two_device_per_process: bool = False

    def problems(self) -> list[str]:
        if self.mode == "two_device" and self.devices and len(self.devices) != 2:
            return [f"devices: two_device needs exactly 2 devices, got {list(self.devices)}"]
        if self.two_device_per_process and self.mode != "ddp":
            return [f"two_device_per_process: only with mode ddp (got mode {self.mode})"]
        return []


@frozen
class RuntimeConfig:
    """Precision and speed options; all off by default (the paper trained in fp32)."""

    dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16 = autocast
    # evaluation's own precision (10-crop passes are 10x the images); same = dtype
    eval_dtype: Literal["same", "float32", "bfloat16"] = "same"
    channels_last: bool = False  # NHWC activations: faster convolutions on GPUs (and CPUs)
    compile: bool = False  # torch.compile
    # torch.compile's mode: reduce-overhead and max-autotune replay CUDA graphs on GPUs
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = "default"
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    # How the tower-local conv2/4/5(/6) run; the same maths and parameters in every form
    # (alexnet.model.tower_conv): grouped (groups=2), block_diagonal (one dense conv whose weight
    # is built from the grouped one), per_tower (one conv per tower). auto: grouped on the CPU,
    # on CUDA the fastest form per layer, measured at its first call and logged.
    tower_conv: Literal["auto", "grouped", "block_diagonal", "per_tower"] = "auto"

    def problems(self) -> list[str]:
        if self.compile_mode != "default" and not self.compile:
            return [f"compile_mode: {self.compile_mode} needs runtime.compile: true"]
        return []


@frozen
class RunConfig:
    """Where a run writes its outputs."""

    dir: Path = Path("runs/ilsvrc2012")
    tensorboard: bool = True
    # TensorBoard pictures (0 = none): this many validation images with their top-5 classes
    # after every epoch (Fig. 4 left), and the fc7 features of this many, with thumbnails and
    # class names, for the embedding projector after the last epoch (Fig. 4 right)
    tensorboard_predictions: int = 8
    tensorboard_embedding: int = 256

    def problems(self) -> list[str]:
        return non_negative(self, "tensorboard_predictions", "tensorboard_embedding")


@frozen
class FinetuneConfig:
    """Start from trained weights instead of §5's initialisation (§6: the "1 CNN*" entries were
    pre-trained, then fine-tuned). Only the weights come from ``init_from``; the optimiser,
    schedule and run folder are new. Layers whose shapes differ (fc8 for another class count)
    keep ``model.init``'s initialisation and are listed in the log."""

    # torchvision (its IMAGENET1K_V1 weights, downloaded once into the torch hub cache), a
    # last.pt/best.pt written by alexnet.train, or a file holding a torchvision state dict
    # (alexnet-owt-7be5be79.pth); null = train from scratch
    init_from: str | None = None
    freeze: tuple[str, ...] = ()  # layers kept fixed, e.g. [conv1, conv2, conv3, conv4, conv5]
    lr_mult: dict[str, float] = field(default_factory=dict)  # per layer, e.g. {fc8: 10}

    def problems(self) -> list[str]:
        out = []
        for where, names in (("freeze", self.freeze), ("lr_mult", self.lr_mult)):
            for layer in names:
                if layer not in ALL_LAYERS:
                    hint = suggest(layer, ALL_LAYERS)
                    out.append(f"{where}: unknown layer {layer!r}{hint}")
        out += [f"lr_mult.{k}: must be > 0, got {v}" for k, v in self.lr_mult.items() if v <= 0]
        out += [f"lr_mult.{k}: the layer is frozen" for k in self.lr_mult if k in self.freeze]
        if self.init_from is not None and not self.init_from.strip():
            out.append("init_from: empty; give torchvision, a checkpoint or null")
        return out


@frozen
class Config:
    """The whole configuration. Each field is one top-level YAML section."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    run: RunConfig = field(default_factory=RunConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def problems(self) -> list[str]:
        out = []
        m, tune = self.model, self.finetune
        if "conv6" in {*tune.freeze, *tune.lr_mult} and not m.extra_conv6:
            out.append("finetune: conv6 exists only with model.extra_conv6: true")
        if {n for n in ALL_LAYERS if n != "conv6" or m.extra_conv6} <= set(tune.freeze):
            out.append("finetune.freeze: every layer is frozen, nothing would be trained")
        towers = self.parallel.mode == "two_device" or self.parallel.two_device_per_process
        if self.model.arch != "two_tower" and towers:
            out.append(
                f"parallel.mode: two_device needs model.arch two_tower, got {self.model.arch}"
            )
        lrn = self.model.lrn
        if towers and lrn.enabled and not lrn.per_tower:
            out.append(
                "parallel.mode: two_device needs model.lrn.per_tower (towers do not talk at LRN)"
            )
        if towers and (m.extra_conv6 or m.lrn.same_map_norm):
            out.append(
                "parallel.mode: two_device does not build model.extra_conv6 or "
                "model.lrn.same_map_norm; use parallel.mode=single (the same maths)"
            )
        if self.schedule.type == "milestones" and not self.schedule.milestones:
            out.append("schedule.milestones: type=milestones needs at least one epoch")
        return out
