import sys

from icrm_kernels.cli import main

sys.exit(main())
