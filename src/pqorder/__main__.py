from pqorder.cli import main

main()
