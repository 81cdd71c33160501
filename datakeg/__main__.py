from datakeg.cli import main

main()
