from cnnbuild.cli import main

main()
