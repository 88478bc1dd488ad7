"""Run stage 'preprocess' as a Ray job: `ray job submit --working-dir . -- python jobs/preprocess.py --config PATH [--run-id ID]`."""
from _entry import main

if __name__ == "__main__":
    main("preprocess")
