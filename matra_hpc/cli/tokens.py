"""`matra-hpc tokens encode|decode|roundtrip`: the invertible Wyckoff representation."""

from __future__ import annotations

import argparse
import json


def _add_encode_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--symprec", type=float, default=0.01, help="symmetry distance tolerance, A (default 0.01)"
    )
    parser.add_argument(
        "--angle-tolerance", type=float, default=5.0, help="spglib angle tolerance, degrees (default 5)"
    )
    parser.add_argument(
        "--symmetry", choices=("moyopy", "spglib"), default="moyopy", help="symmetry finder (default moyopy)"
    )
    parser.add_argument("--max-sites", type=int, default=15, help="most Wyckoff sites encoded (default 15)")
    parser.add_argument("--csv-column", default=None, help="CSV column holding CIF text or Structure dicts")


def _options(args: argparse.Namespace):
    from matra_hpc.tokens.commands import EncodeOptions

    return EncodeOptions(
        symprec=args.symprec,
        angle_tolerance=args.angle_tolerance,
        max_sites=args.max_sites,
        symmetry=args.symmetry,
    )


def cmd_encode(args: argparse.Namespace) -> int:
    """Encode structures (CIF, POSCAR, extxyz, JSON, CSV column; folders) to a JSONL file."""
    from matra_hpc.tokens.commands import EncodeConfig, run_encode

    config = EncodeConfig(inputs=args.paths, out=args.out, csv_column=args.csv_column, options=_options(args))
    print(json.dumps(run_encode(config)))
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    """Decode a JSONL file of token sequences to CIF files."""
    from matra_hpc.tokens.commands import DecodeConfig, run_decode

    print(json.dumps(run_decode(DecodeConfig(sequences=args.sequences, out=args.out))))
    return 0


def cmd_roundtrip(args: argparse.Namespace) -> int:
    """Encode, decode and re-encode structures: one JSON line per failure (its id, index,
    reason and detail), then the JSON summary as the last line."""
    from matra_hpc.tokens.commands import RoundTripConfig, run_roundtrip

    config = RoundTripConfig(
        inputs=args.paths, csv_column=args.csv_column, limit=args.limit, options=_options(args)
    )
    summary = run_roundtrip(config)
    for failure in summary.pop("failed"):
        print(json.dumps({"failed": failure.pop("id"), **failure}))
    print(json.dumps(summary))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "tokens",
        help="encode/decode/round-trip Wyckoff token sequences",
        description="Crystal structure <-> canonical Wyckoff token sequence.",
    )
    tokens = parser.add_subparsers(dest="tokens_command", metavar="ACTION")
    tokens.required = True

    enc = tokens.add_parser("encode", help=cmd_encode.__doc__, description=cmd_encode.__doc__)
    enc.add_argument("paths", nargs="+", metavar="FILES", help="structure files, folders or CSV files")
    enc.add_argument("--out", required=True, help="output JSONL file of sequences")
    _add_encode_options(enc)
    enc.set_defaults(func=cmd_encode)

    dec = tokens.add_parser("decode", help=cmd_decode.__doc__, description=cmd_decode.__doc__)
    dec.add_argument("sequences", help="JSONL file written by 'tokens encode' (or the sampler)")
    dec.add_argument("--out", required=True, help="output folder for CIF files")
    dec.set_defaults(func=cmd_decode)

    rt = tokens.add_parser("roundtrip", help=cmd_roundtrip.__doc__, description=cmd_roundtrip.__doc__)
    rt.add_argument("paths", nargs="+", metavar="PATHS", help="structure files, folders or CSV files")
    rt.add_argument("--limit", type=int, default=None, help="stop after this many structures")
    _add_encode_options(rt)
    rt.set_defaults(func=cmd_roundtrip)
