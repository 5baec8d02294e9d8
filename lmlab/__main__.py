import sys

from lmlab.cli import entry

sys.exit(entry())
