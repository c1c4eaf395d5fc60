"""Frozen entry point of the console ``retouch`` executable (see retouch_studio.spec)."""
import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()  # engine.cli does not call it; worker processes re-enter here
    from engine.cli import main

    sys.exit(main())
