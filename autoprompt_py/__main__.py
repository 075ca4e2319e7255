from autoprompt_py.cli import main

main()
