import sys

from ovnk_secondary.cli import main

sys.exit(main())
