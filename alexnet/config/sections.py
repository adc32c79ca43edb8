"""The configuration's sections: frozen dataclasses whose defaults are the paper's.

Each section checks its own values in ``problems()``; ``alexnet.config.loading`` turns YAML and
``--set`` overrides into these objects and reports every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from alexnet import paper
from alexnet.config.checks import non_negative, positive
from alexnet.config.model import ModelConfig

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

    def problems(self) -> list[str]:
        if self.workers is not None and self.workers < 0:
            return [f"workers: must be >= 0 or null, got {self.workers}"]
        return []


@frozen
class AugmentConfig:
    """Training augmentation (§4.1)."""

    random_crop: bool = True  # random 224 patches at offsets 0..32; False = centre crop
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

    def problems(self) -> list[str]:
        out = non_negative(self, "patience", "threshold", "max_drops")
        if not 0.0 < self.factor < 1.0:
            out.append(f"factor: must be in (0, 1), got {self.factor}")
        if self.type == "milestones" and list(self.milestones) != sorted(set(self.milestones)):
            out.append(f"milestones: must be strictly increasing, got {list(self.milestones)}")
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
    channels_last: bool = False
    compile: bool = False  # torch.compile
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)


@frozen
class RunConfig:
    """Where a run writes its outputs."""

    dir: Path = Path("runs/ilsvrc2012")
    tensorboard: bool = True


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

    def problems(self) -> list[str]:
        out = []
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
        if self.schedule.type == "milestones" and not self.schedule.milestones:
            out.append("schedule.milestones: type=milestones needs at least one epoch")
        return out
