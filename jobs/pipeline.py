"""Run the whole pipeline as a Ray job: `ray job submit --working-dir . -- python jobs/pipeline.py --config PATH [--run-id ID] [--from-stage S] [--to-stage S]`."""
from _entry import main

if __name__ == "__main__":
    main("pipeline")
