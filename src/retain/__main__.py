import sys

from retain.cli import main

sys.exit(main())
