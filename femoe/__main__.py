import sys

from femoe.cli import main

sys.exit(main())
