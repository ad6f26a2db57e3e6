import sys

from sft.cli.main import main

sys.exit(main())
