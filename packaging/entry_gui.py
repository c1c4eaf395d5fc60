"""Frozen entry point of the windowed ``retouch-studio`` executable (see retouch_studio.spec)."""
import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()  # app.main.main() calls it too; harmless twice, needed first
    from app.main import main

    sys.exit(main())
