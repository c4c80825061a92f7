"""Recipients: the rows of a recipients file, read, validated and normalized."""
