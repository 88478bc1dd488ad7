"""Run stage 'deploy' as a Ray job: `ray job submit --working-dir . -- python jobs/deploy.py --config PATH [--run-id ID]`."""
from _entry import main

if __name__ == "__main__":
    main("deploy")
