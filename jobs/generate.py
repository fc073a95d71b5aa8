"""python jobs/generate.py --output FILE [--config conf/X.yaml] [synthetic.key=value ...]

Writes the seeded synthetic interactions of the embedded default (CSV or Parquet by extension).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.synthetic import generate, write  # noqa: E402
from recoder_dist.config import ConfigError, load_config, parse_command_line  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python jobs/generate.py", description=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--output", required=True, help="a .csv, .tsv or .parquet file")
    args = parse_command_line(parser, sys.argv[1:] if argv is None else argv,
                              overrides_help="e.g. synthetic.num_users=138000 synthetic.num_items=27000")
    try:
        config = load_config(args.config, args.overrides).synthetic
        frame = generate(config)
        path = write(frame, Path(args.output))
    except (ConfigError, ValueError) as error:
        print(f"generate: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(frame)} interactions of {frame.user_id.nunique()} users x "
          f"{frame.item_id.nunique()} items to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
