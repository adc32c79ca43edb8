"""``python -m alexnet.model``: print the layer table of a configuration."""

from __future__ import annotations

import argparse
import sys

from alexnet import cli
from alexnet.config import input_size
from alexnet.errors import report_user_errors
from alexnet.model.network import build_model
from alexnet.model.summary import format_summary, summarize


def main(argv: list[str] | None = None) -> int:
    """Print the layer table (output shape, parameters, multiply-adds per image) for a config."""
    parser = argparse.ArgumentParser(
        prog="python -m alexnet.model",
        description="Print AlexNet's layers with output shapes, parameters and multiply-adds\n"
        "per image, measured by a forward pass of the configured model.",
        epilog="examples:\n  python -m alexnet.model\n"
        "  python -m alexnet.model --config configs/ilsvrc2012.yaml --set model.arch=owt\n"
        "  python -m alexnet.model --set model.conv1_geometry=crop227_valid",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_config_options(parser, what="the paper's settings")
    args = parser.parse_args(argv)

    def run() -> int:
        cfg = cli.config_from_args(args).model
        model, size = build_model(cfg), input_size(cfg)
        params = sum(p.numel() for p in model.parameters())
        print(f"AlexNet: arch {cfg.arch}, conv1 {cfg.conv1_geometry}, {cfg.num_classes} classes")
        print(format_summary(summarize(model, size), params, size))
        return 0

    return report_user_errors(run)


if __name__ == "__main__":
    sys.exit(main())
