"""What TensorBoard shows of a training run besides the scalars and conv1's kernels.

After every epoch, ``run.tensorboard_predictions`` validation images with their top-5 classes
(the ``predictions`` figure, centre crops) under IMAGES; after the last epoch, the fc7 features
of ``run.tensorboard_embedding`` validation images, with thumbnails and class names, under
PROJECTOR, where the nearest neighbours of Fig. 4 (right) can be explored. The images are the
same ones every time: spread evenly over the validation split. Only the process that writes
TensorBoard events does this work, in eval mode, without touching any random state.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from alexnet import runtime as runtime_lib
from alexnet.data.loaders import EvalLoader
from alexnet.data.packed import PackedSplit
from alexnet.data.records import CorruptRecord
from alexnet.figures.common import pictures, short_names, spread, subset
from alexnet.inference.features import layer_outputs
from alexnet.log import info
from alexnet.runtime import Placement
from alexnet.training.engine import predict

if TYPE_CHECKING:
    from alexnet.training.session import Session

THUMBNAIL = 64  # pixels a side in the projector's sprite


def record_epoch(s: Session, epoch: int, last: bool) -> None:
    """After ``epoch``: the predictions image; after the ``last`` one, the fc7 embedding too
    (left out, with a warning, when one of their validation images is a corrupt record)."""
    if s.log.writer is None or not s.log.writing:
        return
    try:
        with s.log.failures(s.log.writer.log_dir):
            _pictures(s, epoch, last)
    except CorruptRecord as err:
        info(f"warning: no TensorBoard pictures after epoch {epoch}: {err}")


def _pictures(s: Session, epoch: int, last: bool) -> None:
    writer, run = s.log.writer, s.cfg.run
    assert writer is not None
    model = runtime_lib.unwrap(s.module)
    split = s.data.val.split
    step = s.pos.global_step
    if run.tensorboard_predictions:
        from alexnet.figures import predictions
        from alexnet.figures.common import figure_array

        indices = spread(len(split), run.tensorboard_predictions)
        probs, labels = predict(model, _loader(s, subset(split, indices)), s.rt, False)
        shown = predictions.top_classes(probs, labels, indices)
        title = f"after epoch {epoch + 1}: validation images and the top 5 (centre crop)"
        fig = predictions.draw(pictures(split, indices), shown, split.class_names, title)
        writer.add_image("predictions", figure_array(fig), step, dataformats="HWC")
    if last and run.tensorboard_embedding:
        indices = spread(len(split), run.tensorboard_embedding)
        net = model if hasattr(model, "forward_to") else model.to_alexnet().to(s.rt.device)
        batches = _loader(s, subset(split, indices))
        fc7 = torch.cat([f for f, _ in layer_outputs(net, batches, s.rt, "fc7")])
        thumbs = pictures(split, indices).float().div(255)
        thumbs = F.interpolate(thumbs, size=THUMBNAIL, mode="bilinear", antialias=True)
        names = short_names(split.class_names)
        labels = split.labels[indices].tolist()
        writer.add_embedding(
            fc7.cpu(),
            metadata=[[names[y], str(i)] for i, y in zip(indices, labels, strict=True)],
            label_img=thumbs.clamp(0, 1),
            global_step=step,
            tag="fc7",
            metadata_header=["class", "validation image"],
        )
    writer.flush()


def _loader(s: Session, split: PackedSplit) -> EvalLoader:
    """Centre-crop batches of a few images, read in this process (no worker start-up)."""
    data = dataclasses.replace(s.cfg.data, workers=0)
    at = Placement(s.rt.device)
    return EvalLoader(split, s.data.stats, data, s.cfg.model, 1, s.cfg.eval.batch_size, at)
