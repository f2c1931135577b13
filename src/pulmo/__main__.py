import sys

from pulmo.cli import main

sys.exit(main())
