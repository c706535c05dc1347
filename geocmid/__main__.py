import sys

from geocmid.cli import main

sys.exit(main())
