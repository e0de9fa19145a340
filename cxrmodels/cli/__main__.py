import sys

from cxrmodels.cli import main

sys.exit(main())
