import sys

from imgtrain.cli import main

sys.exit(main())
