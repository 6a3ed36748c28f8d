"""Run the real `densa` CLI with the synthetic datasets under a folder registered.

    python tests/densa_synth.py DATA_ROOT train --dataset synth --data-dir DATA_ROOT ...

For tests that need a separate process (signals, torchrun); in-process tests use the fixtures.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from synthetic import register  # noqa: E402

from densa.cli import main  # noqa: E402

if __name__ == "__main__":
    register(Path(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
