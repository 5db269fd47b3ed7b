import sys

from mlcvlab.cli import main

sys.exit(main())
