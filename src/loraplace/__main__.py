import sys

from loraplace.cli.main import main

sys.exit(main())
