from lipsync_cli.cli import main

main()
