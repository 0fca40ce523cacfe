from situation.launch import main

# Guarded so that importing this module (pkgutil.walk_packages, doc tools)
# never starts the agent: only `python -m situation` does.
if __name__ == "__main__":
    main()
