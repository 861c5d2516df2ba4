"""Build a semantic-ID index for a prepared dataset (same options as `llmrec index build`).

python scripts/build_index.py --dataset data/ml-100k --out runs/ml-100k/sid_index.json --report
"""

import sys

from llmrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["index", "build", *sys.argv[1:]]))
