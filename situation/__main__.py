from situation.launch import main

main()
