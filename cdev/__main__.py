from cdev.fastpath import main

main()
