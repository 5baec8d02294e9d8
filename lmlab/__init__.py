"""lmlab: train, evaluate, compare and report small language models."""

import os as _os

# CPU runs must be reproducible: MKL may otherwise pick its thread count per call from the machine's
# load (MKL_DYNAMIC) and its code path from data alignment (MKL_CBWR), which changes summation order
# and so the last bits of a loss. Set before torch loads MKL; a user's own settings win.
_os.environ.setdefault("MKL_DYNAMIC", "FALSE")
_os.environ.setdefault("MKL_CBWR", "AUTO")
_os.environ.setdefault("OMP_DYNAMIC", "FALSE")

__version__ = "0.1.0"
