"""Run stage 'tune' as a Ray job: `ray job submit --working-dir . -- python jobs/tune.py --config PATH [--run-id ID]`."""
from _entry import main

if __name__ == "__main__":
    main("tune")
