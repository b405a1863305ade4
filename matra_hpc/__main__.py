import sys

from matra_hpc.cli import main

sys.exit(main())
