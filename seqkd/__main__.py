import sys

from seqkd.cli import main

sys.exit(main())
