"""``python -m kernels.compile_gate``: the gate's command line (:mod:`kernels.compile_gate.cli`)."""

import sys

from kernels.compile_gate.cli import main

if __name__ == "__main__":
    sys.exit(main())
