import sys

from vlm.cli import main

if __name__ == "__main__":  # DataLoader / multiprocessing workers started by spawn re-import this module
    sys.exit(main())
