from th_edit.cli import main

main()
