import sys

from jisp.cli import main

sys.exit(main())
