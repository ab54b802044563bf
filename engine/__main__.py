import sys

try:
    from engine.cli import main
except KeyboardInterrupt:  # Ctrl-C while the engine is still importing
    sys.exit(130)

sys.exit(main())
