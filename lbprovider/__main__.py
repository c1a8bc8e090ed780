from lbprovider.cli import main

main()
