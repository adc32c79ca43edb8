"""Typed configuration: YAML sections mapped onto frozen dataclasses whose defaults are the paper's.

``load_config(path, overrides)`` reads a YAML file, applies dotted overrides such as
``model.lrn.k=1`` (the CLIs' repeated ``--set KEY=VALUE``), and builds a ``Config``. Every
problem (unknown key, wrong type, value out of range, inconsistent sections) is collected and
reported at once in one ``ConfigError``, with "did you mean ..." suggestions for misspelt keys.

Type rules, applied the same way to the file and to the command line:
- ``float`` fields accept ints and numeric strings: PyYAML follows YAML 1.1, so ``lr: 1e-3``
  loads as the *string* "1e-3" (only ``1.0e-3`` is a float); we accept it as 0.001.
- ``bool`` fields accept only real booleans (``true``/``false``), never 0/1 or "yes" strings.
- lists become tuples; strings become ``Path`` where a field is a path.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from alexnet import paper
from alexnet.errors import UserError

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
frozen = dataclass(frozen=True, kw_only=True)


class ConfigError(UserError):
    """Every problem found in a configuration, reported together."""

    def __init__(self, problems: Sequence[str], source: str = "") -> None:
        self.problems = list(problems)
        where = f" ({source})" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration{where}:\n{lines}")


# --- sections --------------------------------------------------------------------------------


@frozen
class LRNConfig:
    """Local response normalisation (§3.3). Defaults are the paper's formula as written."""

    enabled: bool = True
    k: float = paper.LRN_K
    size: int = paper.LRN_SIZE
    alpha: float = paper.LRN_ALPHA
    beta: float = paper.LRN_BETA
    # raw_sum: alpha multiplies the sum of squares (paper). divided_by_n: alpha/n (CC2, Caffe, torch).
    alpha_semantics: Literal["raw_sum", "divided_by_n"] = "raw_sum"
    per_tower: bool = True  # §3.2: each tower normalises its own 48 / 128 maps; False = Caffe
    conv1_position: Literal["after_relu", "before_relu"] = "after_relu"  # before: CC2 cfgs

    def problems(self) -> list[str]:
        out = _positive(self, "k", "alpha", "beta")
        if self.size < 1 or self.size % 2 == 0:
            out.append(f"size: must be a positive odd number, got {self.size}")
        return out


@frozen
class DropoutConfig:
    """Dropout on fc6 and fc7 (§4.2)."""

    p: float = paper.DROPOUT_P
    style: Literal["paper", "inverted"] = "paper"  # paper: no train scaling, x(1-p) at test
    placement: Literal["outputs", "inputs"] = "outputs"  # inputs = torchvision's placement

    def problems(self) -> list[str]:
        return [] if 0.0 <= self.p < 1.0 else [f"p: must be in [0, 1), got {self.p}"]


@frozen
class InitConfig:
    """Initialisation (§5): N(0, 0.01^2) weights, bias 1 in conv2/4/5, fc6/7, 0 elsewhere."""

    preset: Literal["paper", "caffe", "cuda_convnet2", "pytorch_default"] = "paper"
    weight_std: dict[str, float] = field(default_factory=dict)  # per-layer overrides
    bias: dict[str, float] = field(default_factory=dict)  # per-layer overrides

    def problems(self) -> list[str]:
        out = []
        for name, table in (("weight_std", self.weight_std), ("bias", self.bias)):
            for layer in table:
                if layer not in LAYERS:
                    out.append(f"{name}.{layer}: unknown layer{_suggest(layer, LAYERS)}")
        out += [f"weight_std.{k}: must be > 0, got {v}" for k, v in self.weight_std.items() if v <= 0]
        return out


@frozen
class ModelConfig:
    """The network (§3). ``arch``: two_tower = the paper; one_tower = §3.2's half-kernel
    comparison net; owt = torchvision's "one weird trick" widths, for comparison only."""

    arch: Literal["two_tower", "one_tower", "owt"] = "two_tower"
    num_classes: int = paper.NUM_CLASSES
    activation: Literal["relu", "tanh"] = "relu"  # §3.1 ablation
    # cc_ceil: 224 input, 55x55 by the author's ceiling rule; crop227_valid: Caffe; pad2_224: tv
    conv1_geometry: Literal["cc_ceil", "crop227_valid", "pad2_224"] = "cc_ceil"
    pooling: Literal["overlapping", "non_overlapping"] = "overlapping"  # §3.4 ablation
    lrn: LRNConfig = field(default_factory=LRNConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    init: InitConfig = field(default_factory=InitConfig)

    def problems(self) -> list[str]:
        return [] if self.num_classes >= 2 else [f"num_classes: must be >= 2, got {self.num_classes}"]


@frozen
class DataConfig:
    """The prepared data set (``python -m alexnet.prepare``) and how batches are made."""

    root: Path = Path("data/ilsvrc2012")  # a folder written by alexnet.prepare
    train_split: str = "train"
    val_split: str = "val"
    loader: Literal["cpu", "gpu"] = "cpu"  # gpu: batched nvJPEG decode + augmentation on GPU
    workers: int = 8  # CPU loader worker processes
    # mean_image: §2 per-pixel mean of the 256x256 training images, cropped with the image.
    # mean_image_center: CC2 subtracts the central crop of the mean. channel_mean_std: torchvision.
    normalize: Literal["mean_image", "mean_image_center", "channel_mean_std"] = "mean_image"

    def problems(self) -> list[str]:
        return [] if self.workers >= 0 else [f"workers: must be >= 0, got {self.workers}"]


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
        return _non_negative(self, "lighting_alpha_std")


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
        out = _positive(self, "lr", "bias_lr_mult") + _non_negative(self, "weight_decay")
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
        out = _non_negative(self, "patience", "threshold", "max_drops")
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
        out = _positive(self, "epochs", "batch_size", "log_every")
        out += _non_negative(self, "checkpoint_every", "stall_steps")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            out.append(f"steps_per_epoch: must be >= 1 or null, got {self.steps_per_epoch}")
        return out


@frozen
class EvalConfig:
    """Evaluation (§4.1: ten views, softmax averaged)."""

    views: Literal[1, 10] = paper.TEST_VIEWS
    batch_size: int = 128  # images per batch (x views forward passes)

    def problems(self) -> list[str]:
        return _positive(self, "batch_size")


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
            out.append(f"parallel.mode: two_device needs model.arch two_tower, got {self.model.arch}")
        lrn = self.model.lrn
        if towers and lrn.enabled and not lrn.per_tower:
            out.append("parallel.mode: two_device needs model.lrn.per_tower (towers do not talk at LRN)")
        if self.schedule.type == "milestones" and not self.schedule.milestones:
            out.append("schedule.milestones: type=milestones needs at least one epoch")
        return out


# --- derived values ---------------------------------------------------------------------------


def input_size(model: ModelConfig) -> int:
    """Side of the square network input implied by the conv1 geometry (224, or 227 for Caffe's)."""
    return 227 if model.conv1_geometry == "crop227_valid" else paper.INPUT_SIZE


# --- loading ----------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or start from the defaults) and apply ``KEY=VALUE`` overrides.

    Raises:
        ConfigError: listing every problem found, file and overrides together.
    """
    source = str(path) if path is not None else "defaults"
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ConfigError([f"cannot read config file: {err.strerror}"], source) from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError([f"not valid YAML: {err}"], source) from None
        if not isinstance(raw, dict):
            raise ConfigError([f"top level must be a mapping, got {type(raw).__name__}"], source)
    problems: list[str] = []
    for item in overrides:
        _apply_override(raw, item, problems)
    return config_from_dict(raw, source, problems)


def config_from_dict(raw: dict[str, Any], source: str = "", problems: list[str] | None = None) -> Config:
    """Build a ``Config`` from plain data (a parsed YAML file, a checkpoint's stored config)."""
    problems = [] if problems is None else problems
    cfg = _build(Config, raw, "", problems)
    if not problems:
        problems += cfg.problems()
    if problems:
        raise ConfigError(problems, source)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML/JSON-safe data (paths as strings, tuples as lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return str(value) if isinstance(value, Path) else value

    return plain(cfg)


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML; ``load_config`` on it gives back an equal ``Config``."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _apply_override(raw: dict[str, Any], item: str, problems: list[str]) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        problems.append(f"override {item!r}: expected KEY=VALUE, e.g. optim.lr=0.005")
        return
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            problems.append(f"override {item!r}: '{part}' is a value, not a section")
            return
        node = child
    node[parts[-1]] = value


def _build(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {_show(data)}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            problems.append(f"{prefix}{key}: unknown key{_suggest(str(key), names, prefix)}")
    kwargs = {}
    for name in names:
        if name in data:
            ok, value = _convert(hints[name], data[name], f"{prefix}{name}", problems)
            if ok:
                kwargs[name] = value
    obj = cls(**kwargs)
    if hasattr(obj, "problems") and cls is not Config:
        problems += [f"{prefix}{p}" for p in obj.problems()]
    return obj


def _convert(tp: Any, value: Any, where: str, problems: list[str]) -> tuple[bool, Any]:
    """Convert ``value`` to type ``tp``; on failure record a problem and return (False, None)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return True, _build(tp, value, where + ".", problems)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where, problems)
    if origin is Literal:
        if value in args and type(value) is type(args[args.index(value)]):
            return True, value
        choices = ", ".join(repr(a) for a in args)
        problems.append(f"{where}: expected one of {choices}, got {_show(value)}{_suggest(str(value), [str(a) for a in args])}")
        return False, None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {_show(value)}")
            return False, None
        items = [_convert(args[0], v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {_show(value)}")
            return False, None
        items = {str(k): _convert(args[1], v, f"{where}.{k}", problems) for k, v in value.items()}
        return all(ok for ok, _ in items.values()), {k: v for k, (_, v) in items.items()}
    return _convert_scalar(tp, value, where, problems)


def _convert_scalar(tp: Any, value: Any, where: str, problems: list[str]) -> tuple[bool, Any]:
    if tp is bool and isinstance(value, bool):
        return True, value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return True, value
    if tp is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string; accept numeric strings
            try:
                return True, float(value)
            except ValueError:
                pass
    if tp is str and isinstance(value, str):
        return True, value
    if tp is Path and isinstance(value, (str, Path)):
        return True, Path(value)
    name = getattr(tp, "__name__", str(tp))
    problems.append(f"{where}: expected {name}, got {_show(value)}")
    return False, None


def _show(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def _suggest(word: str, choices: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _positive(section: Any, *names: str) -> list[str]:
    return [f"{n}: must be > 0, got {getattr(section, n)}" for n in names if getattr(section, n) <= 0]


def _non_negative(section: Any, *names: str) -> list[str]:
    return [f"{n}: must be >= 0, got {getattr(section, n)}" for n in names if getattr(section, n) < 0]
