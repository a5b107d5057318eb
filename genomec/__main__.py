import sys

from genomec.cli import main

sys.exit(main())
