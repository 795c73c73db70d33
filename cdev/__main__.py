from cdev.cli import main

main()
