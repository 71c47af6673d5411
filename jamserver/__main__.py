import sys

from jamserver.cli import main

sys.exit(main())
