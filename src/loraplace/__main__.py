import sys

from loraplace.cli import main

sys.exit(main())
