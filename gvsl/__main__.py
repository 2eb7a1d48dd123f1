import sys

from gvsl.cli import main

sys.exit(main())
