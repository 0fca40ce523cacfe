from situation.cli import main

main()
