from lipsync_cli.cli import main

if __name__ == "__main__":  # not when a worker process (core/phones.py) imports it
    main()
