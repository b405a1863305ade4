"""`matra-hpc train`: train the transformer in this process (also under torchrun).

``matra-hpc submit train`` takes the same arguments and runs the same stage as a torchrun job
through the launch layer (local executor or Slurm); a requeued job resumes from ``--out``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from types import SimpleNamespace

from matra_hpc.launch.stages import SubmittableStage
from matra_hpc.train.config import TrainConfig
from matra_hpc.util import dataclass_defaults


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    d = SimpleNamespace(**dataclass_defaults(TrainConfig))
    parser.add_argument("--data", required=True, help="token store (Zarr) to train on")
    parser.add_argument("--out", required=True,
                        help="output directory (checkpoints, best/, metrics.jsonl, loss.png); rerun resumes")
    parser.add_argument("--model", default=d.model, help="jobs/models/NAME.yaml (tiny, paper) or a YAML path")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="maximum epochs (default %(default)s)")
    parser.add_argument("--global-batch", type=int, default=d.global_batch,
                        help="rows per optimizer step over all ranks (default %(default)s)")
    parser.add_argument("--micro-batch", type=int, default=None,
                        help="rows per forward pass on a rank (gradient accumulation); default: the rank's share")
    parser.add_argument("--lr-max", type=float, default=d.lr_max, help="peak of the one-cycle schedule")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--schedule-steps", type=int, default=None,
                        help="length of the one-cycle schedule (default: all epochs, or --max-steps)")
    parser.add_argument("--patience", type=int, default=d.patience, help="early-stopping patience in epochs")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (checkpointed)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop after this many minutes of training in total, resumes included (checkpointed)")
    parser.add_argument("--ckpt-every-steps", type=int, default=None)
    parser.add_argument("--ckpt-every-minutes", type=float, default=d.ckpt_every_minutes)
    parser.add_argument("--ckpt-every-epochs", type=int, default=d.ckpt_every_epochs)
    parser.add_argument("--log-every", type=int, default=d.log_every, help="steps between metrics records")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=d.precision,
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--device", default=None, help="override the device (cpu, cuda, cuda:1)")
    parser.add_argument("--dropout", type=float, default=None, help="override the model config's dropout")
    parser.add_argument("--cont-loss-weight", type=float, default=None, help="override w in CE + w * MSE")


def build_train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data, out=args.out, model=args.model, epochs=args.epochs, global_batch=args.global_batch,
        micro_batch=args.micro_batch, lr_max=args.lr_max, weight_decay=args.weight_decay,
        schedule_steps=args.schedule_steps, patience=args.patience, seed=args.seed, max_steps=args.max_steps,
        max_minutes=args.max_minutes, ckpt_every_steps=args.ckpt_every_steps,
        ckpt_every_minutes=args.ckpt_every_minutes, ckpt_every_epochs=args.ckpt_every_epochs, log_every=args.log_every, precision=args.precision,
        compile=args.compile, device=args.device, dropout=args.dropout, cont_loss_weight=args.cont_loss_weight,
    )


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from matra_hpc.launch.environment import context_from_environment
    from matra_hpc.train.stage import run_train

    # Under torchrun every process gets its rank from the launcher; alone it is rank 0 of 1.
    ctx = context_from_environment(gpus_per_node=torch.cuda.device_count())
    result = run_train(build_train_config(args), ctx)
    if ctx.rank == 0:
        print(json.dumps(asdict(result)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train", help="train the transformer in this process (also under torchrun)",
        description="Train (or resume) the Matra-Genoa transformer on a token store. "
        "Running it again with the same --out resumes from the newest valid checkpoint.",
    )
    add_train_arguments(parser)
    parser.set_defaults(func=cmd_train)


SUBMIT_STAGES = [
    SubmittableStage(
        name="train",
        kind="torchrun",
        help="train the transformer as a torchrun job (DDP; NCCL on GPUs, gloo on CPU); requeues resume",
        add_arguments=add_train_arguments,
        build_config=build_train_config,
        config_cls=TrainConfig,
        run="matra_hpc.train.stage:run_train",
    )
]
