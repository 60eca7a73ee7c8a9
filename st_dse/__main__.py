from st_dse.cli import main

main()
