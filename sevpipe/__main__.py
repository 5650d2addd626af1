import sys

from sevpipe.cli import main

sys.exit(main())
