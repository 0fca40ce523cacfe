"""Collection modules, one file each; importing a file registers its module."""
